# Both GEMMs on bf16 tensor cores at fp32-level accuracy; bias and sigmoid fused into the split of the
# hidden layer, the second bias and logsumexp fused into one row pass.
#
# Precision: each float32 operand is split into two bf16 parts and three bf16 products are accumulated in
# fp32 (the comment at the top of the CUDA source says how, and why the main product is summed in pieces).
# Against a float64 evaluation the output error stays within a small factor of PyTorch fp32's (NOTES.md).
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

struct SigmoidOf {  // sigmoid(g + bias) of a GEMM result held as pieces, as the source of a split
    Pieces g;
    const float* bias;
    int64_t n;
    __device__ __forceinline__ float operator()(int64_t r, int64_t c) const {
        return 1.0f / (1.0f + expf(-(g.value(r * n + c) + bias[c])));
    }
};

__device__ __forceinline__ void merge_lse(float& m, float& s, float m2, float s2) {
    const float top = fmaxf(m, m2);
    if (top == -INFINITY) return;  // both empty
    s = s * expf(m - top) + s2 * expf(m2 - top);
    m = top;
}

// out[r] = logsumexp_j(g[r][j] + bias[j]): one warp per row, online (running max and sum).
__global__ void row_logsumexp(Pieces g, const float* __restrict__ bias, float* __restrict__ out, int64_t rows,
                              int64_t cols) {
    const int64_t r = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int lane = threadIdx.x & 31;
    float m = -INFINITY, s = 0.0f;
    for (int64_t j = lane; j < cols; j += 32) merge_lse(m, s, g.value(r * cols + j) + bias[j], 1.0f);
    for (int off = 16; off > 0; off >>= 1)
        merge_lse(m, s, __shfl_xor_sync(0xffffffffu, m, off), __shfl_xor_sync(0xffffffffu, s, off));
    if (lane == 0) out[r] = m + logf(s);
}

torch::Tensor forward(torch::Tensor x, torch::Tensor w1, torch::Tensor b1, torch::Tensor w2, torch::Tensor b2) {
    for (const auto* t : {&x, &w1, &b1, &w2, &b2}) {
        TORCH_CHECK(t->is_cuda() && t->scalar_type() == torch::kFloat32, "inputs and parameters: float32 on CUDA");
    }
    TORCH_CHECK(x.dim() == 2 && w1.dim() == 2 && w2.dim() == 2, "x, linear1.weight and linear2.weight: 2-D");
    TORCH_CHECK(x.size(1) == w1.size(1) && w2.size(1) == w1.size(0), "shapes of x, linear1 and linear2 disagree");
    TORCH_CHECK(b1.numel() == w1.size(0) && b2.numel() == w2.size(0), "bias sizes disagree with the weights");
    auto xc = x.contiguous(), w1c = w1.contiguous(), b1c = b1.contiguous(), w2c = w2.contiguous();
    auto b2c = b2.contiguous();
    const int64_t m = xc.size(0), k = xc.size(1), hidden = w1c.size(0), n = w2c.size(0);
    auto out = torch::empty({m}, xc.options());
    if (m == 0) return out;
    TORCH_CHECK(n > 0, "logsumexp over an empty row");
    const auto opts = xc.options();
    const Product g1 = multiply(split(Rows{xc.data_ptr<float>(), k}, m, k, false, opts),
                                split(Rows{w1c.data_ptr<float>(), k}, hidden, k, true, opts));
    const Product g2 = multiply(split(SigmoidOf{g1.pieces(), b1c.data_ptr<float>(), hidden}, m, hidden, false, opts),
                                split(Rows{w2c.data_ptr<float>(), hidden}, n, hidden, true, opts));
    const int warps_per_block = 8;
    const unsigned blocks = (unsigned)((m + warps_per_block - 1) / warps_per_block);
    row_logsumexp<<<blocks, 32 * warps_per_block, 0, c10::cuda::getCurrentCUDAStream()>>>(
        g2.pieces(), b2c.data_ptr<float>(), out.data_ptr<float>(), m, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}
"""

cpp_source = (
    "torch::Tensor forward(torch::Tensor x, torch::Tensor w1, torch::Tensor b1, torch::Tensor w2, torch::Tensor b2);"
)

_ext = load_inline(
    name="kbench_45_gemm_sigmoid_lse_bf16x3",
    cpp_sources=cpp_source,
    cuda_sources=cuda_source,
    functions=["forward"],
    extra_cuda_cflags=["-O3"],
    verbose=False,
)


class ModelNew(nn.Module):
    def __init__(self, input_size, hidden_size, output_size):
        super().__init__()
        self.linear1 = nn.Linear(input_size, hidden_size)
        self.linear2 = nn.Linear(hidden_size, output_size)

    def forward(self, x):
        l1, l2 = self.linear1, self.linear2
        return _ext.forward(x, l1.weight, l1.bias, l2.weight, l2.bias)
