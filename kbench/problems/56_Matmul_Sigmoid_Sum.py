# KernelBench-format problem: y = sum(sigmoid(linear(x)), dim=1, keepdim=True).
# A wide GEMM whose output is squashed elementwise and summed to one value per row.
import torch
import torch.nn as nn


class Model(nn.Module):
    """Linear -> sigmoid -> sum over the features (keepdim); returns shape (batch_size, 1)."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.linear = nn.Linear(input_size, hidden_size)

    def forward(self, x):
        x = self.linear(x)
        x = torch.sigmoid(x)
        return torch.sum(x, dim=1, keepdim=True)


batch_size = 128
input_size = 32768
hidden_size = 32768

# Small sizes for CPU runs (kbench applies them automatically on the CPU).
KBENCH_SMALL_SIZES = {"batch_size": 64, "input_size": 512, "hidden_size": 512}


def get_inputs():
    return [torch.rand(batch_size, input_size)]


def get_init_inputs():
    return [input_size, hidden_size]
