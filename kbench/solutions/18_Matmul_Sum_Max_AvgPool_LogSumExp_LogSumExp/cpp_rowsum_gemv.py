# Algebra instead of a GEMM. After the keepdim row sum, dim 1 has size 1, so max, mean and both logsumexps
# are identities (logsumexp of one value x is x). Then
#     out[b] = sum_j (x[b] . W[j] + bias[j]) = x[b] . colsum(W) + sum(bias),
# one pass over W for its column sums plus a matrix-vector product, instead of a (batch x in x out) GEMM.
# The column sums are taken from the current weight on every call (never cached), accumulated in double.
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

KBENCH_DEVICES = ["cpu"]

cpp_source = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <vector>

static void check_cpu_float(const torch::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
    TORCH_CHECK(t.scalar_type() == torch::kFloat32, name, " must be float32, got ", t.scalar_type());
}

// x: (batch, in), weight: (out, in), bias: (out,). Returns sum over j of (x @ weight.T + bias)[:, j], (batch, 1).
torch::Tensor rowsum_linear(torch::Tensor x, torch::Tensor weight, torch::Tensor bias) {
    check_cpu_float(x, "x");
    check_cpu_float(weight, "weight");
    check_cpu_float(bias, "bias");
    TORCH_CHECK(x.dim() == 2, "x must be 2-D (batch, in_features), got ", x.dim(), " dimensions");
    TORCH_CHECK(weight.dim() == 2, "weight must be 2-D (out_features, in_features)");
    TORCH_CHECK(x.size(1) == weight.size(1), "x has ", x.size(1), " features, weight expects ", weight.size(1));
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), "bias must have shape (out_features,)");

    auto xc = x.contiguous();
    auto wc = weight.contiguous();
    auto bc = bias.contiguous();
    const int64_t batch = xc.size(0);
    const int64_t in_f = wc.size(1);
    const int64_t out_f = wc.size(0);
    const float* xp = xc.data_ptr<float>();
    const float* wp = wc.data_ptr<float>();
    const float* bp = bc.data_ptr<float>();

    // Column sums of the weight. Each task owns a strip of columns and walks the rows in order,
    // so no two threads write the same entry and every read of W is sequential within a row.
    std::vector<double> colsum(static_cast<size_t>(in_f), 0.0);
    double* cs = colsum.data();
    at::parallel_for(0, in_f, 64, [&](int64_t begin, int64_t end) {
        for (int64_t j = 0; j < out_f; ++j) {
            const float* wrow = wp + j * in_f;
            for (int64_t k = begin; k < end; ++k) {
                cs[k] += static_cast<double>(wrow[k]);
            }
        }
    });

    double bias_sum = 0.0;
    for (int64_t j = 0; j < out_f; ++j) {
        bias_sum += static_cast<double>(bp[j]);
    }

    auto out = torch::empty({batch, 1}, xc.options());
    float* op = out.data_ptr<float>();
    at::parallel_for(0, batch, 8, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
            const float* xr = xp + b * in_f;
            // Four independent accumulators shorten the dependency chain of the dot product.
            double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
            int64_t k = 0;
            for (; k + 4 <= in_f; k += 4) {
                a0 += static_cast<double>(xr[k]) * cs[k];
                a1 += static_cast<double>(xr[k + 1]) * cs[k + 1];
                a2 += static_cast<double>(xr[k + 2]) * cs[k + 2];
                a3 += static_cast<double>(xr[k + 3]) * cs[k + 3];
            }
            for (; k < in_f; ++k) {
                a0 += static_cast<double>(xr[k]) * cs[k];
            }
            op[b] = static_cast<float>((a0 + a1) + (a2 + a3) + bias_sum);
        }
    });
    return out;
}
"""

_ext = load_inline(
    name="kbench_18_matmul_sum_rowsum_gemv_cpp",
    cpp_sources=cpp_source,
    functions=["rowsum_linear"],
    extra_cflags=["-O3"],
    verbose=False,
)


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        # Reads self.linear.weight/bias as they are now: a weight update between calls is honoured.
        return _ext.rowsum_linear(x, self.linear.weight, self.linear.bias)
