# The GEMM on bf16 tensor cores at fp32-level accuracy, then BatchNorm (training mode) in two fused passes.
#
# Precision: each float32 operand is split into two bf16 parts and three bf16 products are accumulated in
# fp32 (the comment at the top of the CUDA source says how, and why the main product is summed in pieces).
# BatchNorm divides by each feature's spread over the batch, so the output keeps the GEMM's relative error
# in full; against a float64 evaluation it stays within the 4x of PyTorch fp32's error that the accuracy
# audit allows (NOTES.md gives the measured factor, and the six-product variant that was tried).
# Epilogue: pass 1 computes each feature's batch mean and variance of y = (g + bias) * scale in double and
# updates the running statistics as nn.BatchNorm1d does; pass 2 writes the normalised output.
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

KBENCH_DEVICES = ["cuda"]

cuda_source = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>

// ---- bf16x3 products: the same text in each bf16x3 solution, since every solution file stands alone ----
// Every float32 value v is split into v0 = bf16(v) and v1 = bf16(v - v0), 16 significant bits together, and
//     a . b^T ~ a0 . b0^T + [a0 | a1] . [b1 | b0]^T        (the dropped a1 . b1 is ~2^-16 of each product)
// Both terms are bf16 tensor-core GEMMs with fp32 accumulation and fp32 outputs (cuBLAS, through at::bmm and
// at::mm). The tensor cores' fp32 accumulation drifts over a long inner dimension (NOTES.md), so the big
// term is accumulated in pieces of at most 2048 along K (a batched GEMM over strided views, no copy), and
// the kernels that read the result add the pieces with ordinary round-to-nearest adds.

// A GEMM result held as its pieces: value(i) = big[0][i] + ... + big[chunks - 1][i] + small[i].
struct Pieces {
    const float* big;
    const float* small;
    int chunks;
    int64_t chunk_stride;
    __device__ __forceinline__ float value(int64_t i) const {
        float v = big[i];
        for (int c = 1; c < chunks; ++c) v += big[c * chunk_stride + i];
        return v + small[i];
    }
};

struct Product {
    torch::Tensor big, small;  // (chunks, m, n) and (m, n)
    Pieces pieces() const {
        return Pieces{big.data_ptr<float>(), small.data_ptr<float>(), (int)big.size(0), small.numel()};
    }
};

struct Split {
    torch::Tensor big, small;  // (rows, k) holding v0, and (rows, 2k) holding [v0 | v1] (left) or [v1 | v0] (right)
};

struct Rows {  // a row-major float32 matrix as the source of a split
    const float* p;
    int64_t k;
    __device__ __forceinline__ float operator()(int64_t r, int64_t c) const { return p[r * k + c]; }
};

template <typename Source>
__global__ void split_bf16x3(Source src, __nv_bfloat16* __restrict__ big, __nv_bfloat16* __restrict__ small,
                             int64_t rows, int64_t k, bool right) {
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < k; c += (int64_t)gridDim.x * blockDim.x) {
            const float v = src(r, c);
            const __nv_bfloat16 v0 = __float2bfloat16_rn(v);
            const __nv_bfloat16 v1 = __float2bfloat16_rn(v - __bfloat162float(v0));
            big[r * k + c] = v0;
            small[r * 2 * k + c] = right ? v1 : v0;
            small[r * 2 * k + k + c] = right ? v0 : v1;
        }
    }
}

static dim3 row_grid(int64_t rows, int64_t cols) {
    return dim3((unsigned)std::min<int64_t>((cols + 255) / 256, 64), (unsigned)std::min<int64_t>(rows, 65535));
}

template <typename Source>
static Split split(Source src, int64_t rows, int64_t k, bool right, const torch::TensorOptions& options) {
    auto opts = options.dtype(torch::kBFloat16);
    Split out{torch::empty({rows, k}, opts), torch::empty({rows, 2 * k}, opts)};
    if (rows == 0 || k == 0) return out;
    split_bf16x3<Source><<<row_grid(rows, k), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        src, reinterpret_cast<__nv_bfloat16*>(out.big.data_ptr()),
        reinterpret_cast<__nv_bfloat16*>(out.small.data_ptr()), rows, k, right);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}

static int64_t pieces_for(int64_t k) {
    int64_t c = 1;
    while (k % (2 * c) == 0 && k / (2 * c) >= 2048) c *= 2;
    return c;
}

// left: (m, k) split as a left operand; right: (n, k) split as a right operand. Result: left . right^T.
static Product multiply(const Split& left, const Split& right) {
    const int64_t m = left.big.size(0), n = right.big.size(0), k = left.big.size(1);
    const int64_t c = pieces_for(k), kc = k / c;
    auto a = left.big.view({m, c, kc}).transpose(0, 1);   // (c, m, kc), rows k apart
    auto b = right.big.view({n, c, kc}).transpose(0, 1);  // (c, n, kc)
    return Product{at::bmm(a, b.transpose(1, 2), torch::kFloat32),
                   at::mm(left.small, right.small.t(), torch::kFloat32)};
}
// ---- end of bf16x3 products ----

constexpr int kStatCols = 32;  // features per block in the statistics pass (a warp reads 128 contiguous bytes)
constexpr int kStatRows = 16;  // row groups per block

// Per feature j: y = (g[:, j] + bias[j]) * scale[j]; mean and biased variance over the batch (double);
// the normalising affine map out = y * mul[j] + add[j]; running statistics updated in place.
__global__ void feature_stats(Pieces g, const float* __restrict__ bias,
                              const float* __restrict__ scale, const float* __restrict__ gamma,
                              const float* __restrict__ beta, float* __restrict__ running_mean,
                              float* __restrict__ running_var, float* __restrict__ mul, float* __restrict__ add,
                              int64_t rows, int64_t cols, double eps, double factor, bool use_batch_stats) {
    __shared__ double sums[kStatRows][kStatCols], squares[kStatRows][kStatCols];
    const int64_t j = blockIdx.x * (int64_t)kStatCols + threadIdx.x;
    double s = 0.0, q = 0.0;
    if (j < cols && use_batch_stats) {
        for (int64_t r = threadIdx.y; r < rows; r += kStatRows) {
            const double y = (double)((g.value(r * cols + j) + bias[j]) * scale[j]);
            s += y;
            q += y * y;
        }
    }
    sums[threadIdx.y][threadIdx.x] = s;
    squares[threadIdx.y][threadIdx.x] = q;
    __syncthreads();
    if (threadIdx.y != 0 || j >= cols) return;
    double mean, var;
    if (use_batch_stats) {
        s = q = 0.0;
        for (int i = 0; i < kStatRows; ++i) { s += sums[i][threadIdx.x]; q += squares[i][threadIdx.x]; }
        mean = s / (double)rows;
        var = fmax(q / (double)rows - mean * mean, 0.0);
        if (running_mean != nullptr) {
            running_mean[j] = (float)((1.0 - factor) * running_mean[j] + factor * mean);
            running_var[j] = (float)((1.0 - factor) * running_var[j] + factor * var * rows / (double)(rows - 1));
        }
    } else {
        mean = running_mean[j];
        var = running_var[j];
    }
    const double inv_std = 1.0 / sqrt(var + eps);
    const double w = gamma != nullptr ? gamma[j] : 1.0;
    const double b = beta != nullptr ? beta[j] : 0.0;
    mul[j] = (float)(inv_std * w);
    add[j] = (float)(b - mean * inv_std * w);
}

__global__ void normalize(Pieces g, const float* __restrict__ bias, const float* __restrict__ scale,
                          const float* __restrict__ mul, const float* __restrict__ add, float* __restrict__ out,
                          int64_t rows, int64_t cols) {
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < cols;
             j += (int64_t)gridDim.x * blockDim.x) {
            const float y = (g.value(r * cols + j) + bias[j]) * scale[j];
            out[r * cols + j] = fmaf(y, mul[j], add[j]);
        }
    }
}

static const float* maybe(const c10::optional<torch::Tensor>& t) {
    return t.has_value() ? t->data_ptr<float>() : nullptr;
}

// running_mean/var: updated in place when given and use_batch_stats; used instead of batch statistics otherwise.
torch::Tensor forward(torch::Tensor x, torch::Tensor weight, torch::Tensor bias, torch::Tensor scale,
                      c10::optional<torch::Tensor> gamma, c10::optional<torch::Tensor> beta,
                      c10::optional<torch::Tensor> running_mean, c10::optional<torch::Tensor> running_var,
                      bool use_batch_stats, double eps, double factor) {
    for (const auto* t : {&x, &weight, &bias, &scale}) {
        TORCH_CHECK(t->is_cuda() && t->scalar_type() == torch::kFloat32 && t->is_contiguous(),
                    "x, weight, bias and scale must be contiguous float32 CUDA tensors");
    }
    for (const auto* t : {&gamma, &beta, &running_mean, &running_var}) {
        TORCH_CHECK(!t->has_value() || ((*t)->is_cuda() && (*t)->scalar_type() == torch::kFloat32 &&
                                        (*t)->is_contiguous() && (*t)->numel() == weight.size(0)),
                    "BatchNorm parameters and buffers must be contiguous float32 CUDA tensors of out_features");
    }
    TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1), "x (b, in) and weight (out, in)");
    TORCH_CHECK(bias.numel() == weight.size(0) && scale.numel() == weight.size(0), "bias and scale: out_features");
    TORCH_CHECK(use_batch_stats || running_mean.has_value(), "no running statistics to normalise with");
    const int64_t m = x.size(0), n = weight.size(0);
    TORCH_CHECK(!use_batch_stats || m > 1, "Expected more than 1 value per channel when training, got batch ", m);
    const int64_t k = x.size(1);
    const Product g = multiply(split(Rows{x.data_ptr<float>(), k}, m, k, false, x.options()),
                               split(Rows{weight.data_ptr<float>(), k}, n, k, true, x.options()));
    auto stats = torch::empty({2, n}, x.options());
    auto out = torch::empty({m, n}, x.options());
    if (n == 0) return out;
    auto stream = c10::cuda::getCurrentCUDAStream();
    const unsigned stat_blocks = (unsigned)((n + kStatCols - 1) / kStatCols);
    feature_stats<<<stat_blocks, dim3(kStatCols, kStatRows), 0, stream>>>(
        g.pieces(), bias.data_ptr<float>(), scale.data_ptr<float>(), maybe(gamma), maybe(beta),
        running_mean.has_value() ? running_mean->data_ptr<float>() : nullptr,
        running_var.has_value() ? running_var->data_ptr<float>() : nullptr,
        stats.data_ptr<float>(), stats.data_ptr<float>() + n, m, n, eps, factor, use_batch_stats);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    normalize<<<row_grid(m, n), 256, 0, stream>>>(g.pieces(), bias.data_ptr<float>(), scale.data_ptr<float>(),
                                                  stats.data_ptr<float>(), stats.data_ptr<float>() + n,
                                                  out.data_ptr<float>(), m, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}
"""

cpp_source = """
torch::Tensor forward(torch::Tensor x, torch::Tensor weight, torch::Tensor bias, torch::Tensor scale,
                      c10::optional<torch::Tensor> gamma, c10::optional<torch::Tensor> beta,
                      c10::optional<torch::Tensor> running_mean, c10::optional<torch::Tensor> running_var,
                      bool use_batch_stats, double eps, double factor);
"""

_ext = load_inline(
    name="kbench_33_gemm_scale_bn_bf16x3",
    cpp_sources=cpp_source,
    cuda_sources=cuda_source,
    functions=["forward"],
    extra_cuda_cflags=["-O3"],
    verbose=False,
)


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features, scale_shape, eps=1e-5, momentum=0.1):
        super().__init__()
        self.gemm = nn.Linear(in_features, out_features)
        self.scale = nn.Parameter(torch.randn(scale_shape))
        self.bn = nn.BatchNorm1d(out_features, eps=eps, momentum=momentum)

    def forward(self, x):
        bn = self.bn
        # The same rules as nn.BatchNorm1d: batch statistics in training mode or without running statistics;
        # the update factor is the momentum, or a cumulative average when momentum is None.
        use_batch_stats = bn.training or bn.running_mean is None
        factor = 0.0
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        update = use_batch_stats and bn.training and bn.running_mean is not None
        running = (bn.running_mean, bn.running_var) if (update or not use_batch_stats) else (None, None)
        return _ext.forward(
            x.contiguous(),
            self.gemm.weight.contiguous(),
            self.gemm.bias.contiguous(),
            self.scale.contiguous(),
            bn.weight,
            bn.bias,
            running[0],
            running[1],
            use_batch_stats,
            bn.eps,
            factor,
        )
