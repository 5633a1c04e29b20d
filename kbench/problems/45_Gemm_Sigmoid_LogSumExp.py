# KernelBench-format problem: y = logsumexp(linear2(sigmoid(linear1(x))), dim=1).
# Two GEMMs with an elementwise sigmoid between them, then a row reduction to one value per row.
import torch
import torch.nn as nn


class Model(nn.Module):
    """Linear -> sigmoid -> Linear -> logsumexp over the features; returns shape (batch_size,)."""

    def __init__(self, input_size, hidden_size, output_size):
        super().__init__()
        self.linear1 = nn.Linear(input_size, hidden_size)
        self.linear2 = nn.Linear(hidden_size, output_size)

    def forward(self, x):
        x = self.linear1(x)
        x = torch.sigmoid(x)
        x = self.linear2(x)
        return torch.logsumexp(x, dim=1)


batch_size = 16384
input_size = 2048
hidden_size = 4096
output_size = 1024

# Small sizes for CPU runs (kbench applies them automatically on the CPU).
KBENCH_SMALL_SIZES = {"batch_size": 64, "input_size": 256, "hidden_size": 512, "output_size": 256}


def get_inputs():
    return [torch.rand(batch_size, input_size)]


def get_init_inputs():
    return [input_size, hidden_size, output_size]
