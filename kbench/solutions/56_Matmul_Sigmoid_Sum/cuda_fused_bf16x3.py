# One fused kernel: the (128 x 32768) . (32768 x 32768)^T product on bf16 tensor cores at fp32-level accuracy,
# with bias, sigmoid and the row sum applied to the accumulators, so the 4 GiB weight is read exactly once and
# the (batch x hidden) activation never reaches memory.
#
# Precision: every float32 value v is split into two bf16 parts, v0 = bf16(v) and v1 = bf16(v - v0), 16
# significant bits together, and x.w ~ x0.w0 + x0.w1 + x1.w0 (the dropped x1.w1 is ~2^-16 of each product),
# three bf16 tensor-core products accumulated in fp32. x is split once per call by a small kernel; each tile
# of W is split in registers right before use, so W is never rewritten. The rounding errors of the dropped
# terms are independent and mostly cancel in the 32768-term dot products and again in the sum over 32768
# sigmoids: measured against a float64 evaluation, the error matches PyTorch fp32's (NOTES.md).
#
# Layout: a block computes a 128 (batch) x 128 (hidden) tile over the whole inner dimension, 64 columns of K
# per step through a 3-stage cp.async pipeline; 8 warps, each 64 x 32 of the tile with mma.sync m16n8k16.
# Each block writes one partial row sum per batch row; a last kernel adds the partials in a fixed order.
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

KBENCH_DEVICES = ["cuda"]

cuda_source = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cstdint>

namespace {

constexpr int BM = 128, BN = 128, BK = 64, STAGES = 3, THREADS = 256;
constexpr int FLUSH_STEPS = 4;  // K steps (of BK) between flushes of the tensor-core accumulators
constexpr int W_STRIDE = BK + 8;  // floats per W row in shared memory: conflict-free 8-byte fragment reads
constexpr int X_STRIDE = BK + 8;  // bf16 per x row in shared memory: conflict-free 4-byte fragment reads
constexpr int W_STAGE = BN * W_STRIDE;  // floats
constexpr int X_STAGE = BM * X_STRIDE;  // bf16, for each of x0 and x1
constexpr size_t STAGE_BYTES = W_STAGE * sizeof(float) + 2 * X_STAGE * sizeof(__nv_bfloat16);
constexpr size_t SMEM_BYTES = STAGES * STAGE_BYTES;

__global__ void split_x(const float* __restrict__ x, __nv_bfloat16* __restrict__ x0, __nv_bfloat16* __restrict__ x1,
                        int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float v = x[i];
        const __nv_bfloat16 hi = __float2bfloat16_rn(v);
        x0[i] = hi;
        x1[i] = __float2bfloat16_rn(v - __bfloat162float(hi));
    }
}

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
    const unsigned dst = (unsigned)__cvta_generic_to_shared(smem);
    const int bytes = valid ? 16 : 0;  // 0: fill the 16 bytes with zeros (rows past the end of the matrix)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __nv_bfloat16* smem_row) {
    const unsigned addr = (unsigned)__cvta_generic_to_shared(smem_row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ uint32_t as_u32(__nv_bfloat162 v) { return *reinterpret_cast<uint32_t*>(&v); }

// Two consecutive-k floats of W -> the high and low bf16 pairs of one B-fragment register.
__device__ __forceinline__ void split_pair(float2 w, uint32_t& hi, uint32_t& lo) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(w.x, w.y);
    const __nv_bfloat162 l = __floats2bfloat162_rn(w.x - __low2float(h), w.y - __high2float(h));
    hi = as_u32(h);
    lo = as_u32(l);
}

// Stage the K-columns [k0, k0 + BK) of this block's W rows and x rows into shared memory.
__device__ __forceinline__ void load_stage(float* ws, __nv_bfloat16* xs0, __nv_bfloat16* xs1,
                                           const float* __restrict__ w, const __nv_bfloat16* __restrict__ x0,
                                           const __nv_bfloat16* __restrict__ x1, int64_t n_base, int64_t m_base,
                                           int64_t n_rows, int64_t m_rows, int64_t k, int64_t k0) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int i = 0; i < (BN * BK / 4) / THREADS; ++i) {  // 16-byte chunks of W: 4 floats
        const int c = tid + i * THREADS, row = c / (BK / 4), col = (c % (BK / 4)) * 4;
        const bool valid = n_base + row < n_rows;
        const float* src = valid ? w + (n_base + row) * k + k0 + col : w;
        cp_async_16(ws + row * W_STRIDE + col, src, valid);
    }
#pragma unroll
    for (int i = 0; i < (BM * BK / 8) / THREADS; ++i) {  // 16-byte chunks of x0 and x1: 8 bf16
        const int c = tid + i * THREADS, row = c / (BK / 8), col = (c % (BK / 8)) * 8;
        const bool valid = m_base + row < m_rows;
        const int64_t offset = valid ? (m_base + row) * k + k0 + col : 0;
        cp_async_16(xs0 + row * X_STRIDE + col, x0 + offset, valid);
        cp_async_16(xs1 + row * X_STRIDE + col, x1 + offset, valid);
    }
}

// partial[blockIdx.x][m] = sum over this block's hidden units j of sigmoid(x[m] . w[j] + bias[j]).
__global__ void __launch_bounds__(THREADS, 1)
fused_linear_sigmoid_rowsum(const float* __restrict__ w, const __nv_bfloat16* __restrict__ x0,
                            const __nv_bfloat16* __restrict__ x1, const float* __restrict__ bias,
                            float* __restrict__ partial, int64_t m_rows, int64_t n_rows, int64_t k) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int warp_m = warp / 4, warp_n = warp % 4;  // 2 x 4 warps, each 64 (m) x 32 (n)
    const int g = lane >> 2, t = lane & 3;
    const int64_t n_base = blockIdx.x * (int64_t)BN, m_base = blockIdx.y * (int64_t)BM;

    auto w_stage = [&](int s) { return reinterpret_cast<float*>(smem + s * STAGE_BYTES); };
    auto x0_stage = [&](int s) {
        return reinterpret_cast<__nv_bfloat16*>(smem + s * STAGE_BYTES + W_STAGE * sizeof(float));
    };
    auto x1_stage = [&](int s) { return x0_stage(s) + X_STAGE; };

    // The tensor cores' fp32 accumulation drifts when carried over the whole inner dimension (NOTES.md: the
    // error against float64 grew to 3.7x PyTorch fp32's). So `acc` collects FLUSH_STEPS steps of products
    // from zero and is then added into `total` with ordinary round-to-nearest adds.
    float acc[4][4][4], total[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) total[i][j][e] = acc[i][j][e] = 0.0f;

    const int64_t steps = k / BK;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < steps) load_stage(w_stage(s), x0_stage(s), x1_stage(s), w, x0, x1, n_base, m_base, n_rows, m_rows, k,
                                  s * (int64_t)BK);
        cp_async_commit();
    }

    for (int64_t step = 0; step < steps; ++step) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // stage `step` has landed for every thread; the stage refilled below is free
        const int64_t next = step + STAGES - 1;
        if (next < steps) {
            const int s = (int)(next % STAGES);
            load_stage(w_stage(s), x0_stage(s), x1_stage(s), w, x0, x1, n_base, m_base, n_rows, m_rows, k,
                       next * BK);
        }
        cp_async_commit();

        const int s = (int)(step % STAGES);
        const float* ws = w_stage(s);
        const __nv_bfloat16* xs0 = x0_stage(s);
        const __nv_bfloat16* xs1 = x1_stage(s);
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            uint32_t a_hi[4][4], a_lo[4][4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                // ldmatrix.x4: lanes 0-15 address rows 0-15 at k, lanes 16-31 the same rows at k + 8.
                const int row = warp_m * 64 + i * 16 + (lane & 15);
                const int col = kk + (lane >> 4) * 8;
                ldmatrix_x4(a_hi[i], xs0 + row * X_STRIDE + col);
                ldmatrix_x4(a_lo[i], xs1 + row * X_STRIDE + col);
            }
            uint32_t b_hi[4][2], b_lo[4][2];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float* wrow = ws + (warp_n * 32 + j * 8 + g) * W_STRIDE + kk + 2 * t;
                split_pair(*reinterpret_cast<const float2*>(wrow), b_hi[j][0], b_lo[j][0]);
                split_pair(*reinterpret_cast<const float2*>(wrow + 8), b_hi[j][1], b_lo[j][1]);
            }
            // One product at a time over all 16 accumulators, small terms first: consecutive MMAs never
            // wait for each other's result.
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int i = 0; i < 4; ++i) mma_bf16(acc[i][j], a_lo[i], b_hi[j][0], b_hi[j][1]);
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int i = 0; i < 4; ++i) mma_bf16(acc[i][j], a_hi[i], b_lo[j][0], b_lo[j][1]);
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int i = 0; i < 4; ++i) mma_bf16(acc[i][j], a_hi[i], b_hi[j][0], b_hi[j][1]);
        }
        if ((step + 1) % FLUSH_STEPS == 0 || step + 1 == steps) {
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        total[i][j][e] += acc[i][j][e];
                        acc[i][j][e] = 0.0f;
                    }
        }
    }
    cp_async_wait<0>();

    // Epilogue: bias, sigmoid, and this block's part of each row sum.
    float row_sum[4][2];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        row_sum[i][0] = row_sum[i][1] = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int64_t n = n_base + warp_n * 32 + j * 8 + 2 * t + (e & 1);
                if (n < n_rows) {
                    const float h = total[i][j][e] + bias[n];
                    row_sum[i][e >> 1] += 1.0f / (1.0f + expf(-h));
                }
            }
        }
    }
    __syncthreads();  // the pipeline's shared memory is reused for the cross-warp sums
    float* sums = reinterpret_cast<float*>(smem);  // [4 warp columns][BM rows]
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float v = row_sum[i][h];
            v += __shfl_xor_sync(0xffffffffu, v, 1);
            v += __shfl_xor_sync(0xffffffffu, v, 2);
            if (t == 0) sums[warp_n * BM + warp_m * 64 + i * 16 + h * 8 + g] = v;
        }
    }
    __syncthreads();
    if (tid < BM && m_base + tid < m_rows) {
        const float v = (sums[tid] + sums[BM + tid]) + (sums[2 * BM + tid] + sums[3 * BM + tid]);
        partial[blockIdx.x * m_rows + m_base + tid] = v;
    }
}

// out[m] = sum over blocks b of partial[b][m], in double, in a fixed order.
__global__ void add_partials(const float* __restrict__ partial, float* __restrict__ out, int64_t blocks,
                             int64_t m_rows) {
    const int64_t m = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (m >= m_rows) return;
    double s = 0.0;
    for (int64_t b = 0; b < blocks; ++b) s += partial[b * m_rows + m];
    out[m] = (float)s;
}

}  // namespace

torch::Tensor forward(torch::Tensor x, torch::Tensor weight, torch::Tensor bias) {
    for (const auto* t : {&x, &weight, &bias}) {
        TORCH_CHECK(t->is_cuda() && t->scalar_type() == torch::kFloat32, "x, weight and bias must be float32 on CUDA");
    }
    TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1), "x (b, in) and weight (out, in)");
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), "bias must have out_features elements");
    const int64_t m = x.size(0), k = x.size(1), n = weight.size(0);
    TORCH_CHECK(k % BK == 0, "this kernel needs in_features divisible by ", BK, ", got ", k);
    auto xc = x.contiguous(), wc = weight.contiguous(), bc = bias.contiguous();
    auto out = torch::empty({m, 1}, xc.options());
    if (m == 0) return out;
    if (n == 0 || k == 0) {
        // sum over no hidden units is 0; with no inputs every hidden unit is sigmoid(bias)
        return n == 0 ? out.zero_() : torch::sigmoid(bc).sum().expand({m, 1}).contiguous();
    }
    auto stream = c10::cuda::getCurrentCUDAStream();
    auto x0 = torch::empty({m, k}, xc.options().dtype(torch::kBFloat16));
    auto x1 = torch::empty_like(x0);
    const int64_t xn = m * k;
    split_x<<<(unsigned)std::min<int64_t>((xn + 255) / 256, 132 * 16), 256, 0, stream>>>(
        xc.data_ptr<float>(), reinterpret_cast<__nv_bfloat16*>(x0.data_ptr()),
        reinterpret_cast<__nv_bfloat16*>(x1.data_ptr()), xn);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    const int64_t n_blocks = (n + BN - 1) / BN, m_blocks = (m + BM - 1) / BM;
    TORCH_CHECK(m_blocks <= 65535, "batch too large");
    auto partial = torch::empty({n_blocks, m}, xc.options());
    // More than 48 KiB of dynamic shared memory must be asked for (per device, so on every call: it is cheap).
    C10_CUDA_CHECK(cudaFuncSetAttribute(fused_linear_sigmoid_rowsum, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)SMEM_BYTES));
    fused_linear_sigmoid_rowsum<<<dim3((unsigned)n_blocks, (unsigned)m_blocks), THREADS, SMEM_BYTES, stream>>>(
        wc.data_ptr<float>(), reinterpret_cast<const __nv_bfloat16*>(x0.data_ptr()),
        reinterpret_cast<const __nv_bfloat16*>(x1.data_ptr()), bc.data_ptr<float>(), partial.data_ptr<float>(), m, n,
        k);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    add_partials<<<(unsigned)((m + 255) / 256), 256, 0, stream>>>(partial.data_ptr<float>(), out.data_ptr<float>(),
                                                                  n_blocks, m);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}
"""

cpp_source = "torch::Tensor forward(torch::Tensor x, torch::Tensor weight, torch::Tensor bias);"

_ext = load_inline(
    name="kbench_56_fused_linear_sigmoid_sum_bf16x3",
    cpp_sources=cpp_source,
    cuda_sources=cuda_source,
    functions=["forward"],
    extra_cuda_cflags=["-O3"],
    verbose=False,
)


class ModelNew(nn.Module):
    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.linear = nn.Linear(input_size, hidden_size)

    def forward(self, x):
        return _ext.forward(x, self.linear.weight, self.linear.bias)
