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

constexpr int kThreads = 128;        // per block of column_partial_sums; each thread sums 4 (or 1) columns
constexpr int kRowsPerChunk = 256;   // rows summed by one block; the chunks' partial sums are added after
constexpr int kInFlight = 8;         // rows loaded before they are added: loads in flight per thread
constexpr int kFinishCols = 32;      // finish_column_sums: a block takes 32 columns ...
constexpr int kFinishGroups = 8;     // ... and splits their chunks among 8 groups of threads

template <int V> struct Lanes;       // V columns per thread: float4 where rows are 16-byte aligned, else float
template <> struct Lanes<4> { using type = float4; };
template <> struct Lanes<1> { using type = float; };
__device__ __forceinline__ void add_to(double* acc, float4 v) {
    acc[0] += v.x;
    acc[1] += v.y;
    acc[2] += v.z;
    acc[3] += v.w;
}
__device__ __forceinline__ void add_to(double* acc, float v) { acc[0] += v; }

// partial[chunk][k] = sum of W[j][k] over the rows j of the chunk, in double, rows in order. W is read once, with
// streaming loads (it is not needed again), kInFlight rows at a time.
template <int V>
__global__ void column_partial_sums(const float* __restrict__ w, double* __restrict__ partial,
                                    int64_t rows, int64_t cols) {
    using Vec = typename Lanes<V>::type;
    const int64_t k = (blockIdx.x * (int64_t)kThreads + threadIdx.x) * V;
    if (k >= cols) return;
    const int64_t first = blockIdx.y * (int64_t)kRowsPerChunk;
    const int64_t last = min(first + kRowsPerChunk, rows);
    double acc[V];
#pragma unroll
    for (int i = 0; i < V; ++i) acc[i] = 0.0;
    int64_t j = first;
    for (; j + kInFlight <= last; j += kInFlight) {
        Vec v[kInFlight];
#pragma unroll
        for (int u = 0; u < kInFlight; ++u) v[u] = __ldcs(reinterpret_cast<const Vec*>(w + (j + u) * cols + k));
#pragma unroll
        for (int u = 0; u < kInFlight; ++u) add_to(acc, v[u]);
    }
    for (; j < last; ++j) add_to(acc, __ldcs(reinterpret_cast<const Vec*>(w + j * cols + k)));
#pragma unroll
    for (int i = 0; i < V; ++i) partial[blockIdx.y * cols + k + i] = acc[i];
}

// colsum[k] = sum over chunks of partial[chunk][k], in a fixed order (so every call gives the same bits); block 0
// also sums the bias into colsum[cols].
__global__ void finish_column_sums(const double* __restrict__ partial, const float* __restrict__ bias,
                                   double* __restrict__ colsum, int64_t chunks, int64_t cols, int64_t rows) {
    __shared__ double group_sums[kFinishGroups][kFinishCols];
    const int c = threadIdx.x % kFinishCols, g = threadIdx.x / kFinishCols;
    const int64_t k = blockIdx.x * (int64_t)kFinishCols + c;
    double s = 0.0;
    if (k < cols) {
#pragma unroll 4
        for (int64_t chunk = g; chunk < chunks; chunk += kFinishGroups) s += partial[chunk * cols + k];
    }
    group_sums[g][c] = s;
    __syncthreads();
    if (g == 0 && k < cols) {
        double total = 0.0;
        for (int i = 0; i < kFinishGroups; ++i) total += group_sums[i][c];
        colsum[k] = total;
    }
    if (blockIdx.x == 0) {
        __shared__ double warp_sums[32];
        double b = 0.0;
#pragma unroll 8
        for (int64_t j = threadIdx.x; j < rows; j += blockDim.x) b += bias[j];
        for (int off = 16; off > 0; off >>= 1) b += __shfl_down_sync(0xffffffffu, b, off);
        if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = b;
        __syncthreads();
        if (threadIdx.x == 0) {
            double total = 0.0;
            for (int i = 0; i < (int)(blockDim.x >> 5); ++i) total += warp_sums[i];
            colsum[cols] = total;
        }
    }
}

// out[b] = x[b] . colsum + colsum[cols] (the bias sum): one block per row of x; float4 loads of x where the
// row is 16-byte aligned and cols % 4 == 0, else scalar.
__global__ void row_dot(const float* __restrict__ x, const double* __restrict__ colsum, float* __restrict__ out,
                        int64_t cols) {
    const float* xr = x + blockIdx.x * cols;
    double s = 0.0;
    const bool vec = cols % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
    if (vec) {
        const float4* x4 = reinterpret_cast<const float4*>(xr);
        const double2* c2 = reinterpret_cast<const double2*>(colsum);
#pragma unroll 4
        for (int64_t q = threadIdx.x; q < cols / 4; q += blockDim.x) {
            const float4 v = __ldcs(x4 + q);
            const double2 c0 = c2[2 * q], c1 = c2[2 * q + 1];
            s += (double)v.x * c0.x + (double)v.y * c0.y + (double)v.z * c1.x + (double)v.w * c1.y;
        }
    } else {
#pragma unroll 8
        for (int64_t k = threadIdx.x; k < cols; k += blockDim.x) s += (double)__ldcs(xr + k) * colsum[k];
    }
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
    // Every entry is written when there are rows; a weight with no rows sums to 0.
    auto partial = rows > 0 ? torch::empty({chunks, cols}, dopts) : torch::zeros({chunks, cols}, dopts);
    auto colsum = torch::empty({cols + 1}, dopts);
    auto stream = c10::cuda::getCurrentCUDAStream();
    if (rows > 0 && cols > 0) {
        const float* w = wc.data_ptr<float>();
        const bool vector_rows = cols % 4 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
        const int64_t lanes = vector_rows ? 4 : 1;
        dim3 grid((unsigned)((cols + kThreads * lanes - 1) / (kThreads * lanes)), (unsigned)chunks);
        if (vector_rows) {
            column_partial_sums<4><<<grid, kThreads, 0, stream>>>(w, partial.data_ptr<double>(), rows, cols);
        } else {
            column_partial_sums<1><<<grid, kThreads, 0, stream>>>(w, partial.data_ptr<double>(), rows, cols);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const unsigned finish_blocks = (unsigned)std::max<int64_t>(1, (cols + kFinishCols - 1) / kFinishCols);
    finish_column_sums<<<finish_blocks, kFinishCols * kFinishGroups, 0, stream>>>(
        partial.data_ptr<double>(), bc.data_ptr<float>(), colsum.data_ptr<double>(), chunks, cols, rows);
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
