# KernelBench-format problem: linear, then a row sum, then max, mean and two logsumexps over dim 1.
# After the keepdim row sum dim 1 has size 1, so the four reductions that follow leave the value unchanged.
import torch
import torch.nn as nn


class Model(nn.Module):
    """Linear -> sum -> max -> mean -> logsumexp -> logsumexp, all over dim 1; returns (batch_size, 1)."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        x = self.linear(x)
        x = torch.sum(x, dim=1, keepdim=True)
        x = torch.max(x, dim=1, keepdim=True).values
        x = torch.mean(x, dim=1, keepdim=True)
        x = torch.logsumexp(x, dim=1, keepdim=True)
        x = torch.logsumexp(x, dim=1, keepdim=True)
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
