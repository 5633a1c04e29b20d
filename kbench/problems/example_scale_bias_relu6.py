# kbench example problem: a per-feature affine transform followed by ReLU6.
# PyTorch makes three passes over the tensor (multiply-add, relu, clamp); one fused pass suffices.
import torch
import torch.nn as nn


class Model(nn.Module):
    """y = min(max(x * scale + bias, 0), 6) with learnable per-feature scale and bias."""

    def __init__(self, features):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(features))
        self.bias = nn.Parameter(torch.randn(features))

    def forward(self, x):
        x = x * self.scale + self.bias
        x = torch.relu(x)
        return torch.clamp(x, max=6.0)


batch_size = 4096
features = 4096

# Small sizes for CPU runs (kbench applies them automatically on the CPU).
KBENCH_SMALL_SIZES = {"batch_size": 512, "features": 1024}


def get_inputs():
    return [torch.randn(batch_size, features) * 4]


def get_init_inputs():
    return [features]
