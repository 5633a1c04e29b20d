# KernelBench-format problem: linear, a learnable per-feature scale, then BatchNorm1d in training mode
# (normalised with the batch's statistics; the running statistics are updated on every call).
import torch
import torch.nn as nn


class Model(nn.Module):
    """Linear -> x * scale -> BatchNorm1d (training mode); returns shape (batch_size, out_features)."""

    def __init__(self, in_features, out_features, scale_shape, eps=1e-5, momentum=0.1):
        super().__init__()
        self.gemm = nn.Linear(in_features, out_features)
        self.scale = nn.Parameter(torch.randn(scale_shape))
        self.bn = nn.BatchNorm1d(out_features, eps=eps, momentum=momentum)

    def forward(self, x):
        x = self.gemm(x)
        x = x * self.scale
        x = self.bn(x)
        return x


batch_size = 1024
in_features = 8192
out_features = 8192
# (out_features,), written as a literal so kbench can read and override it; keep it equal to (out_features,).
scale_shape = (8192,)

# Small sizes for CPU runs (kbench applies them automatically on the CPU); scale_shape follows out_features.
KBENCH_SMALL_SIZES = {"batch_size": 64, "in_features": 256, "out_features": 512, "scale_shape": (512,)}


def get_inputs():
    return [torch.rand(batch_size, in_features)]


def get_init_inputs():
    return [in_features, out_features, scale_shape]
