# One fused pass on the CPU: each element is read once and written once, rows split across threads.
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

KBENCH_DEVICES = ["cpu"]

cpp_source = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>

torch::Tensor scale_bias_relu6(torch::Tensor x, torch::Tensor scale, torch::Tensor bias) {
    TORCH_CHECK(x.device().is_cpu(), "x must be a CPU tensor");
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, "x must be float32");
    auto xc = x.contiguous();
    auto sc = scale.contiguous();
    auto bc = bias.contiguous();
    const int64_t cols = sc.numel();
    TORCH_CHECK(xc.dim() >= 1 && xc.size(-1) == cols, "last dimension must match scale");
    auto out = torch::empty_like(xc);
    const int64_t rows = cols == 0 ? 0 : xc.numel() / cols;
    const float* xp = xc.data_ptr<float>();
    const float* sp = sc.data_ptr<float>();
    const float* bp = bc.data_ptr<float>();
    float* op = out.data_ptr<float>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            const float* xr = xp + r * cols;
            float* orow = op + r * cols;
            for (int64_t c = 0; c < cols; ++c) {
                orow[c] = std::min(std::max(xr[c] * sp[c] + bp[c], 0.0f), 6.0f);
            }
        }
    });
    return out;
}
"""

_ext = load_inline(
    name="kbench_example_scale_bias_relu6_cpp",
    cpp_sources=cpp_source,
    functions=["scale_bias_relu6"],
    extra_cflags=["-O3"],
    verbose=False,
)


class ModelNew(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(features))
        self.bias = nn.Parameter(torch.randn(features))

    def forward(self, x):
        return _ext.scale_bias_relu6(x, self.scale, self.bias)
