# One fused pass on the GPU, four floats per thread (16-byte loads/stores) where the row length allows.
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

cuda_source = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>

__device__ __forceinline__ float relu6(float v) { return fminf(fmaxf(v, 0.0f), 6.0f); }

__global__ void scale_bias_relu6_vec4(const float4* __restrict__ x, const float4* __restrict__ scale,
                                      const float4* __restrict__ bias, float4* __restrict__ out,
                                      int64_t n4, int64_t cols4) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t c = i % cols4;
        const float4 v = x[i], s = scale[c], b = bias[c];
        out[i] = make_float4(relu6(v.x * s.x + b.x), relu6(v.y * s.y + b.y),
                             relu6(v.z * s.z + b.z), relu6(v.w * s.w + b.w));
    }
}

__global__ void scale_bias_relu6_scalar(const float* __restrict__ x, const float* __restrict__ scale,
                                        const float* __restrict__ bias, float* __restrict__ out,
                                        int64_t n, int64_t cols) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t c = i % cols;
        out[i] = relu6(x[i] * scale[c] + bias[c]);
    }
}

torch::Tensor scale_bias_relu6(torch::Tensor x, torch::Tensor scale, torch::Tensor bias) {
    TORCH_CHECK(x.is_cuda() && x.scalar_type() == torch::kFloat32, "x must be a float32 CUDA tensor");
    auto xc = x.contiguous();
    auto sc = scale.contiguous();
    auto bc = bias.contiguous();
    const int64_t cols = sc.numel();
    TORCH_CHECK(xc.dim() >= 1 && xc.size(-1) == cols, "last dimension must match scale");
    auto out = torch::empty_like(xc);
    const int64_t n = xc.numel();
    if (n == 0) return out;
    const int threads = 256;
    auto stream = c10::cuda::getCurrentCUDAStream();
    if (cols % 4 == 0) {
        const int64_t n4 = n / 4;
        const int blocks = (int)std::min<int64_t>((n4 + threads - 1) / threads, 132 * 16);
        scale_bias_relu6_vec4<<<blocks, threads, 0, stream>>>(
            reinterpret_cast<const float4*>(xc.data_ptr<float>()),
            reinterpret_cast<const float4*>(sc.data_ptr<float>()),
            reinterpret_cast<const float4*>(bc.data_ptr<float>()),
            reinterpret_cast<float4*>(out.data_ptr<float>()), n4, cols / 4);
    } else {
        const int blocks = (int)std::min<int64_t>((n + threads - 1) / threads, 132 * 16);
        scale_bias_relu6_scalar<<<blocks, threads, 0, stream>>>(
            xc.data_ptr<float>(), sc.data_ptr<float>(), bc.data_ptr<float>(), out.data_ptr<float>(), n, cols);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}
"""

cpp_source = "torch::Tensor scale_bias_relu6(torch::Tensor x, torch::Tensor scale, torch::Tensor bias);"

_ext = load_inline(
    name="kbench_example_scale_bias_relu6_cuda",
    cpp_sources=cpp_source,
    cuda_sources=cuda_source,
    functions=["scale_bias_relu6"],
    extra_cuda_cflags=["-O3"],
    verbose=False,
)


class ModelNew(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(features))
        self.bias = nn.Parameter(torch.randn(features))

    def forward(self, x):
        return _ext.scale_bias_relu6(x, self.scale, self.bias)
