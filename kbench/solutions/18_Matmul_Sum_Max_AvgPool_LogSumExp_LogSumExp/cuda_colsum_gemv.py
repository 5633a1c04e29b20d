# Algebra instead of a GEMM, on the GPU. After the keepdim row sum, dim 1 has size 1, so max, mean and both
# logsumexps are identities (logsumexp of one value x is x). Then
#     out[b] = sum_j (x[b] . W[j] + bias[j]) = x[b] . colsum(W) + sum(bias):
# one streaming pass over W (its column sums) and a matrix-vector product, instead of a (batch x in x out)
# GEMM. The column sums come from the current weight on every call (never cached), accumulated in double.
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

KBENCH_DEVICES = ["cuda"]

cuda_source = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>

constexpr int kColsPerBlock = 256;  // one column per thread: a warp reads 128 consecutive bytes of a row
constexpr int kRowsPerChunk = 128;  // rows summed by one block; the partial sums of the chunks are added after

// partial[chunk][k] = sum of W[j][k] over the rows j of the chunk, in double.
__global__ void column_partial_sums(const float* __restrict__ w, double* __restrict__ partial,
                                    int64_t rows, int64_t cols) {
    const int64_t k = blockIdx.x * (int64_t)kColsPerBlock + threadIdx.x;
    const int64_t first = blockIdx.y * (int64_t)kRowsPerChunk;
    if (k >= cols) return;
    const int64_t last = min(first + kRowsPerChunk, rows);
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;  // four loads in flight per thread
    int64_t j = first;
    for (; j + 4 <= last; j += 4) {
        a0 += w[j * cols + k];
        a1 += w[(j + 1) * cols + k];
        a2 += w[(j + 2) * cols + k];
        a3 += w[(j + 3) * cols + k];
    }
    for (; j < last; ++j) a0 += w[j * cols + k];
    partial[blockIdx.y * cols + k] = (a0 + a1) + (a2 + a3);
}

// colsum[k] = sum over chunks of partial[chunk][k]; block 0 also sums the bias into colsum[cols].
__global__ void finish_column_sums(const double* __restrict__ partial, const float* __restrict__ bias,
                                   double* __restrict__ colsum, int64_t chunks, int64_t cols, int64_t rows) {
    const int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (k < cols) {
        double s = 0.0;
        for (int64_t c = 0; c < chunks; ++c) s += partial[c * cols + k];
        colsum[k] = s;
    }
    if (blockIdx.x == 0) {
        __shared__ double warp_sums[32];
        double s = 0.0;
        for (int64_t j = threadIdx.x; j < rows; j += blockDim.x) s += bias[j];
        for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
        if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = s;
        __syncthreads();
        if (threadIdx.x == 0) {
            double total = 0.0;
            for (int i = 0; i < (int)(blockDim.x >> 5); ++i) total += warp_sums[i];
            colsum[cols] = total;
        }
    }
}

// out[b] = x[b] . colsum + colsum[cols] (the bias sum): one block per row of x.
__global__ void row_dot(const float* __restrict__ x, const double* __restrict__ colsum, float* __restrict__ out,
                        int64_t cols) {
    const float* xr = x + blockIdx.x * cols;
    double s = 0.0;
    for (int64_t k = threadIdx.x; k < cols; k += blockDim.x) s += (double)xr[k] * colsum[k];
    __shared__ double warp_sums[32];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = colsum[cols];
        for (int i = 0; i < (int)(blockDim.x >> 5); ++i) total += warp_sums[i];
        out[blockIdx.x] = (float)total;
    }
}

static void check_cuda_float(const torch::Tensor& t, const char* name) {
    TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
    TORCH_CHECK(t.scalar_type() == torch::kFloat32, name, " must be float32, got ", t.scalar_type());
}

// x: (batch, in), weight: (out, in), bias: (out,). Returns sum over j of (x @ weight.T + bias)[:, j], (batch, 1).
torch::Tensor rowsum_linear(torch::Tensor x, torch::Tensor weight, torch::Tensor bias) {
    check_cuda_float(x, "x");
    check_cuda_float(weight, "weight");
    check_cuda_float(bias, "bias");
    TORCH_CHECK(x.dim() == 2, "x must be 2-D (batch, in_features), got ", x.dim(), " dimensions");
    TORCH_CHECK(weight.dim() == 2, "weight must be 2-D (out_features, in_features)");
    TORCH_CHECK(x.size(1) == weight.size(1), "x has ", x.size(1), " features, weight expects ", weight.size(1));
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), "bias must have shape (out_features,)");
    auto xc = x.contiguous();
    auto wc = weight.contiguous();
    auto bc = bias.contiguous();
    const int64_t batch = xc.size(0), cols = wc.size(1), rows = wc.size(0);
    auto out = torch::empty({batch, 1}, xc.options());
    if (batch == 0) return out;
    const int64_t chunks = std::max<int64_t>(1, (rows + kRowsPerChunk - 1) / kRowsPerChunk);
    auto dopts = xc.options().dtype(torch::kFloat64);
    auto partial = torch::zeros({chunks, cols}, dopts);  // zeros: a weight with no rows sums to 0
    auto colsum = torch::empty({cols + 1}, dopts);
    auto stream = c10::cuda::getCurrentCUDAStream();
    if (rows > 0 && cols > 0) {
        dim3 grid((unsigned)((cols + kColsPerBlock - 1) / kColsPerBlock), (unsigned)chunks);
        column_partial_sums<<<grid, kColsPerBlock, 0, stream>>>(wc.data_ptr<float>(), partial.data_ptr<double>(),
                                                                rows, cols);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const unsigned finish_blocks = (unsigned)std::max<int64_t>(1, (cols + 255) / 256);
    finish_column_sums<<<finish_blocks, 256, 0, stream>>>(partial.data_ptr<double>(), bc.data_ptr<float>(),
                                                         colsum.data_ptr<double>(), chunks, cols, rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    row_dot<<<(unsigned)batch, 256, 0, stream>>>(xc.data_ptr<float>(), colsum.data_ptr<double>(),
                                                 out.data_ptr<float>(), cols);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}
"""

cpp_source = "torch::Tensor rowsum_linear(torch::Tensor x, torch::Tensor weight, torch::Tensor bias);"

_ext = load_inline(
    name="kbench_18_matmul_sum_colsum_gemv_cuda",
    cpp_sources=cpp_source,
    cuda_sources=cuda_source,
    functions=["rowsum_linear"],
    extra_cuda_cflags=["-O3"],
    verbose=False,
)


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        # Reads self.linear.weight/bias as they are now: a weight update between calls is honoured.
        return _ext.rowsum_linear(x, self.linear.weight, self.linear.bias)
