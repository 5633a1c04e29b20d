# KernelBench-format problem: linear, logsumexp over the features (keepdim), then two LeakyReLUs
# (slope 0.01) and two exact (erf) GELUs applied to the single value left in each row.
import torch
import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
    """Linear -> logsumexp(dim=1, keepdim) -> leaky_relu x2 -> gelu x2; returns shape (batch_size, 1)."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, x):
        x = self.linear(x)
        x = torch.logsumexp(x, dim=1, keepdim=True)
        x = F.leaky_relu(x, negative_slope=0.01)
        x = F.leaky_relu(x, negative_slope=0.01)
        x = F.gelu(x)
        x = F.gelu(x)
        return x


batch_size = 1024
in_features = 8192
out_features = 8192

# Small sizes for CPU runs (kbench applies them automatically on the CPU).
KBENCH_SMALL_SIZES = {"batch_size": 64, "in_features": 512, "out_features": 512}


def get_inputs():
    return [torch.rand(batch_size, in_features)]


def get_init_inputs():
    return [in_features, out_features]
