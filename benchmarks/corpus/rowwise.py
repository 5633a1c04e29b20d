"""Row-wise recipes: reductions over one dimension, softmax-like rows, and normalisations (LayerNorm, RMSNorm,
GroupNorm). CUDA kernels take one block per row (or per output element) and reduce in shared memory; Triton
kernels take one program per row and loop over it in blocks. A wrong solution renders ``mistake``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from string import Template

from kernel_parts import CudaKernel, KernelOptions, TritonKernel, indent

CUDA_HEAD = Template(
    """\
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <cmath>

// $tag: $summary
constexpr int kBlock = $block;
"""
)

CUDA_BLOCK_REDUCE = Template(
    """
__device__ float block_$name(float value, float* buf) {
    buf[threadIdx.x] = value;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) buf[threadIdx.x] = $combine;
        __syncthreads();
    }
    const float result = buf[0];
    __syncthreads();
    return result;
}
"""
)


def _block_reduce(name: str, combine: str) -> str:
    return CUDA_BLOCK_REDUCE.substitute(name=name, combine=combine)


CUDA_CHECKS = """\
    TORCH_CHECK(x.is_cuda(), "x must be a CUDA tensor");
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, "x must be float32");
"""

# ---- reductions -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReduceOp:
    title: str
    axis: bool  # True: any dim of a 3D tensor (self.dim); False: a softmax-like op over dim 1 of a 2D tensor
    ref: str  # the reference's return expression
    keepdim: bool = False


REDUCE_OPS: dict[str, ReduceOp] = {
    "sum": ReduceOp("Sum_reduction_over_a_dimension", True, "torch.sum(x, dim=self.dim, keepdim=True)", True),
    "mean": ReduceOp("Mean_reduction_over_a_dimension", True, "torch.mean(x, dim=self.dim)"),
    "max": ReduceOp("Max_reduction_over_a_dimension", True, "torch.max(x, dim=self.dim)[0]"),
    "min": ReduceOp("Min_reduction_over_a_dimension", True, "torch.min(x, dim=self.dim)[0]"),
    "softmax": ReduceOp("Softmax", False, "torch.softmax(x, dim=1)"),
    "log_softmax": ReduceOp("LogSoftmax", False, "torch.log_softmax(x, dim=1)"),
    "logsumexp": ReduceOp("LogSumExp", False, "torch.logsumexp(x, dim=1, keepdim=True)", True),
}

REDUCE_MISTAKES: dict[str, tuple[str, str]] = {  # op -> (mistake, what it does)
    "sum": ("skip_last", "off-by-one: the last element of each reduction is left out"),
    "mean": ("no_divide", "returns the sum: never divides by the count"),
    "max": ("swap", "reduces with min instead of max"),
    "min": ("swap", "reduces with max instead of min"),
    "softmax": ("no_divide", "writes exp(x - max): never divides by the row's sum"),
    "log_softmax": ("no_max", "forgets to subtract the row maximum"),
    "logsumexp": ("no_max", "forgets to add back the row maximum"),
}

CUDA_AXIS_REDUCE = Template(
    """
// One block per output element: the threads stride over the reduced dimension, then a shared-memory tree.
__global__ void ${fn}_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t reduced, int64_t inner) {
    __shared__ float buf[kBlock];
    const int64_t o = blockIdx.x / inner;
    const int64_t i = blockIdx.x % inner;
    const float* base = x + o * reduced * inner + i;
    float acc = $init;
    for (int64_t r = threadIdx.x; r < $bound; r += blockDim.x) acc = $combine_acc;
    acc = block_$name(acc, buf);
    if (threadIdx.x == 0) out[blockIdx.x] = $final;
}

torch::Tensor $fn(torch::Tensor x, int64_t dim) {
$checks    auto input = x.contiguous();
    if (dim < 0) dim += input.dim();
    const int64_t reduced = input.size(dim);
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < dim; ++d) outer *= input.size(d);
    for (int64_t d = dim + 1; d < input.dim(); ++d) inner *= input.size(d);
    auto sizes = input.sizes().vec();
    sizes[dim] = 1;
    auto out = torch::empty(sizes, input.options());
    if (outer * inner > 0) {
        ${fn}_kernel<<<(unsigned)(outer * inner), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
            input.data_ptr<float>(), out.data_ptr<float>(), reduced, inner);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return $result;
}
"""
)

CUDA_ROW_SOFTMAX = Template(
    """
// One block per row: the row's maximum, then the sum of exp(x - max), then the outputs.
__global__ void ${fn}_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t cols) {
    __shared__ float buf[kBlock];
    const float* row = x + (int64_t)blockIdx.x * cols;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, row[j]);
    m = block_max(m, buf);
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += expf(row[j] - m);
    s = block_sum(s, buf);
$write
}

torch::Tensor $fn(torch::Tensor x) {
$checks    TORCH_CHECK(x.dim() == 2, "x must be 2D");
    auto input = x.contiguous();
    const int64_t rows = input.size(0), cols = input.size(1);
    auto out = $alloc;
    if (rows > 0 && cols > 0) {
        ${fn}_kernel<<<(unsigned)rows, kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
            input.data_ptr<float>(), out.data_ptr<float>(), cols);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return out;
}
"""
)

TRITON_AXIS_REDUCE = Template(
    """\
BLOCK_SIZE = $block


@triton.jit
def ${fn}_kernel(x_ptr, out_ptr, n_cols, BLOCK_SIZE: tl.constexpr):
    # $tag: $summary
    row = tl.program_id(axis=0)
    base = x_ptr + row * n_cols
    acc = tl.full([BLOCK_SIZE], $init, tl.float32)
    for start in range(0, n_cols, BLOCK_SIZE):
        cols = start + tl.arange(0, BLOCK_SIZE)
        vals = tl.load(base + cols, mask=cols < n_cols$bound, other=$init)
        acc = $combine
    tl.store(out_ptr + row, $final)


def $fn(x, dim):
    moved = x.movedim(dim, -1).contiguous()
    rows = moved.reshape(-1, moved.shape[-1])
    out = torch.empty(rows.shape[0], device=x.device, dtype=x.dtype)
    ${fn}_kernel[(rows.shape[0],)](rows, out, rows.shape[1], BLOCK_SIZE=BLOCK_SIZE)
    out = out.view(moved.shape[:-1])
    return $result
"""
)

TRITON_ROW_SOFTMAX = Template(
    """\
BLOCK_SIZE = $block


@triton.jit
def ${fn}_kernel(x_ptr, out_ptr, n_cols, BLOCK_SIZE: tl.constexpr):
    # $tag: $summary
    row = tl.program_id(axis=0)
    base = x_ptr + row * n_cols
    m_acc = tl.full([BLOCK_SIZE], -float("inf"), tl.float32)
    for start in range(0, n_cols, BLOCK_SIZE):
        cols = start + tl.arange(0, BLOCK_SIZE)
        vals = tl.load(base + cols, mask=cols < n_cols, other=-float("inf"))
        m_acc = tl.maximum(m_acc, vals)
    m = tl.max(m_acc, axis=0)
    s_acc = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
    for start in range(0, n_cols, BLOCK_SIZE):
        cols = start + tl.arange(0, BLOCK_SIZE)
        vals = tl.load(base + cols, mask=cols < n_cols, other=-float("inf"))
        s_acc += tl.exp(vals - m)
    s = tl.sum(s_acc, axis=0)
$write


def $fn(x):
    x = x.contiguous()
    n_rows, n_cols = x.shape
    out = $alloc
    ${fn}_kernel[(n_rows,)](x, out, n_cols, BLOCK_SIZE=BLOCK_SIZE)
    return out
"""
)

TRITON_ROW_WRITE = """\
    for start in range(0, n_cols, BLOCK_SIZE):
        cols = start + tl.arange(0, BLOCK_SIZE)
        mask = cols < n_cols
        vals = tl.load(base + cols, mask=mask, other=0.0)
        tl.store(out_ptr + row * n_cols + cols, $value, mask=mask)"""


@dataclass(frozen=True)
class Reduction:
    op: str
    mistake: str | None = None

    family = "reduction"

    @property
    def spec(self) -> ReduceOp:
        return REDUCE_OPS[self.op]

    @property
    def title(self) -> str:
        return self.spec.title

    def model_init(self) -> list[str]:
        return ["self.dim = dim"] if self.spec.axis else []

    def reference_forward(self) -> list[str]:
        return [f"return {self.spec.ref}"]

    def mutations(self) -> list[tuple[str, Reduction]]:
        mistake, what = REDUCE_MISTAKES[self.op]
        return [(what, replace(self, mistake=mistake))]

    def torch_forward(self) -> list[str]:
        wrong = self.mistake is not None
        moved = "x.movedim(self.dim, -1)"
        if self.op == "sum":
            part = f"{moved}[..., :-1]" if wrong else moved
            return [f"return torch.sum({part}, dim=-1).unsqueeze(self.dim)"]
        if self.op == "mean":
            return [f"return {moved}.sum(dim=-1)" + ("" if wrong else " / x.shape[self.dim]")]
        if self.op in ("max", "min"):
            fn = {"max": "amax", "min": "amin"}[self.op]
            if wrong:
                fn = {"amax": "amin", "amin": "amax"}[fn]
            return [f"return torch.{fn}(x, dim=self.dim)"]
        lines = ["m = x.amax(dim=1, keepdim=True)", "e = torch.exp(x - m)"]
        if self.op == "softmax":
            return [*lines, "return e" if wrong else "return e / e.sum(dim=1, keepdim=True)"]
        log_sum = "torch.log(e.sum(dim=1, keepdim=True))"
        if self.op == "log_softmax":
            return [*lines, f"return x - {log_sum}" if wrong else f"return x - m - {log_sum}"]
        return [*lines, f"return {log_sum}" if wrong else f"return m + {log_sum}"]

    def _axis_parts(self) -> dict[str, str]:
        is_max = (self.op == "max") != (self.mistake == "swap")
        if self.op in ("sum", "mean"):
            return {"name": "sum", "combine": "a + b", "init": "0.0f", "fn": "+"}
        return {
            "name": "max" if is_max else "min",
            "combine": "fmaxf(a, b)" if is_max else "fminf(a, b)",
            "init": "-INFINITY" if is_max else "INFINITY",
            "fn": "fmaxf" if is_max else "fminf",
        }

    def cuda(self, opt: KernelOptions) -> CudaKernel:
        head = CUDA_HEAD.substitute(tag=opt.tag, summary=self._summary(), block=opt.block)
        if self.spec.axis:
            parts = self._axis_parts()
            pair = "buf[threadIdx.x], buf[threadIdx.x + s]"
            combine = "buf[threadIdx.x] + buf[threadIdx.x + s]" if parts["fn"] == "+" else f"{parts['fn']}({pair})"
            acc = "acc + base[r * inner]" if parts["fn"] == "+" else f"{parts['fn']}(acc, base[r * inner])"
            final = "acc / (float)reduced" if self.op == "mean" and self.mistake is None else "acc"
            body = _block_reduce(parts["name"], combine) + CUDA_AXIS_REDUCE.substitute(
                fn=opt.fn,
                init=parts["init"],
                bound="reduced - 1" if self.mistake == "skip_last" else "reduced",
                combine_acc=acc,
                name=parts["name"],
                final=final,
                checks=CUDA_CHECKS,
                result="out" if self.spec.keepdim else "out.squeeze(dim)",
            )
            decl = f"torch::Tensor {opt.fn}(torch::Tensor x, int64_t dim);"
            return CudaKernel(head + body, decl, opt.fn, [f"return ext.{opt.fn}(x, self.dim)"])
        helpers = _block_reduce("max", "fmaxf(buf[threadIdx.x], buf[threadIdx.x + s])")
        helpers += _block_reduce("sum", "buf[threadIdx.x] + buf[threadIdx.x + s]")
        body = helpers + CUDA_ROW_SOFTMAX.substitute(
            fn=opt.fn,
            write=self._cuda_write(),
            checks=CUDA_CHECKS,
            alloc="torch::empty({rows, 1}, input.options())" if self.op == "logsumexp" else "torch::empty_like(input)",
        )
        decl = f"torch::Tensor {opt.fn}(torch::Tensor x);"
        return CudaKernel(head + body, decl, opt.fn, [f"return ext.{opt.fn}(x)"])

    def _cuda_write(self) -> str:
        wrong = self.mistake is not None
        if self.op == "logsumexp":
            value = "logf(s)" if wrong else "m + logf(s)"
            return f"    if (threadIdx.x == 0) out[blockIdx.x] = {value};"
        value = {"softmax": "expf(row[j] - m) / s", "log_softmax": "row[j] - m - logf(s)"}[self.op]
        if wrong:
            value = {"softmax": "expf(row[j] - m)", "log_softmax": "row[j] - logf(s)"}[self.op]
        return (
            "    float* dst = out + (int64_t)blockIdx.x * cols;\n"
            f"    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) dst[j] = {value};"
        )

    def triton(self, opt: KernelOptions) -> TritonKernel:
        if self.spec.axis:
            parts = self._axis_parts()
            init = {"sum": "0.0", "max": '-float("inf")', "min": 'float("inf")'}[parts["name"]]
            combine = {"sum": "acc + vals", "max": "tl.maximum(acc, vals)", "min": "tl.minimum(acc, vals)"}
            final = {"sum": "tl.sum(acc, axis=0)", "max": "tl.max(acc, axis=0)", "min": "tl.min(acc, axis=0)"}
            result = final[parts["name"]] + (" / n_cols" if self.op == "mean" and self.mistake is None else "")
            code = TRITON_AXIS_REDUCE.substitute(
                block=opt.block,
                fn=opt.fn,
                tag=opt.tag,
                summary=self._summary(),
                init=init,
                bound=" - 1" if self.mistake == "skip_last" else "",
                combine=combine[parts["name"]],
                final=result,
                result="out.unsqueeze(dim)" if self.spec.keepdim else "out",
            )
            return TritonKernel(code, [f"return {opt.fn}(x, self.dim)"])
        wrong = self.mistake is not None
        if self.op == "logsumexp":
            write = f"    tl.store(out_ptr + row, {'tl.log(s)' if wrong else 'm + tl.log(s)'})"
        else:
            value = "tl.exp(vals - m) / s" if self.op == "softmax" else "vals - m - tl.log(s)"
            if wrong:
                value = "tl.exp(vals - m)" if self.op == "softmax" else "vals - tl.log(s)"
            write = Template(TRITON_ROW_WRITE).substitute(value=value)
        code = TRITON_ROW_SOFTMAX.substitute(
            block=opt.block,
            fn=opt.fn,
            tag=opt.tag,
            summary=self._summary(),
            write=write,
            alloc="torch.empty((n_rows, 1), device=x.device, dtype=x.dtype)"
            if self.op == "logsumexp"
            else "torch.empty_like(x)",
        )
        return TritonKernel(code, [f"return {opt.fn}(x)"])

    def _summary(self) -> str:
        return f"{self.title.replace('_', ' ').lower()}, one block per {'output' if self.spec.axis else 'row'}"


# ---- normalisations ---------------------------------------------------------------------------------------

NORM_TITLES = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm", "groupnorm": "GroupNorm"}

NORM_MISTAKES: dict[str, list[tuple[str, str]]] = {
    "layernorm": [
        ("no_mean", "forgets to subtract the mean"),
        ("second_moment", "uses E[x^2] as the variance (no mean subtracted)"),
    ],
    "rmsnorm": [("no_sqrt", "divides by the mean square instead of its square root")],
    "groupnorm": [
        ("no_mean", "forgets to subtract the group mean"),
        ("second_moment", "uses E[x^2] as the group variance (no mean subtracted)"),
    ],
}

CUDA_ROW_NORM = Template(
    """
// One block per $row_what: statistics reduced in shared memory, then the normalised row written.
__global__ void ${fn}_kernel(
    const float* __restrict__ x, const float* __restrict__ weight, ${bias_param}float* __restrict__ out,
    int64_t row_len, ${group_params}float eps) {
    __shared__ float buf[kBlock];
    const int64_t row = blockIdx.x;
    const float* src = x + row * row_len;
    float* dst = out + row * row_len;
$stats
    for (int64_t j = threadIdx.x; j < row_len; j += blockDim.x) {
$write
    }
}

torch::Tensor $fn($host_params) {
$checks    auto input = x.contiguous();
    auto w = weight.contiguous();
$bias_prep    auto out = torch::empty_like(input);
$rows
    if (rows == 0 || row_len == 0) return out;
    ${fn}_kernel<<<(unsigned)rows, kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        input.data_ptr<float>(), w.data_ptr<float>(), ${bias_arg}out.data_ptr<float>(), row_len,
        ${group_args}(float)eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}
"""
)

TRITON_ROW_NORM = Template(
    """\
BLOCK_SIZE = $block


@triton.jit
def ${fn}_kernel(x_ptr, w_ptr, ${bias_param}out_ptr, row_len, ${group_params}eps, BLOCK_SIZE: tl.constexpr):
    # $tag: $summary
    row = tl.program_id(axis=0)
    base = row * row_len
$mean
    acc = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
    for start in range(0, row_len, BLOCK_SIZE):
        cols = start + tl.arange(0, BLOCK_SIZE)
        mask = cols < row_len
        vals = tl.load(x_ptr + base + cols, mask=mask, other=0.0)
        diff = $diff
        acc += diff * diff
    rstd = $rstd
    for start in range(0, row_len, BLOCK_SIZE):
        cols = start + tl.arange(0, BLOCK_SIZE)
        mask = cols < row_len
        vals = tl.load(x_ptr + base + cols, mask=mask, other=0.0)
$write
        tl.store(out_ptr + base + cols, y, mask=mask)


def $fn($host_params):
    x = x.contiguous()
$rows
    out = torch.empty_like(x)
    ${fn}_kernel[(rows,)](x, weight.contiguous(), ${bias_arg}out, row_len, ${group_args}eps, BLOCK_SIZE=BLOCK_SIZE)
    return out
"""
)

TRITON_MEAN = """\
    total = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
    for start in range(0, row_len, BLOCK_SIZE):
        cols = start + tl.arange(0, BLOCK_SIZE)
        total += tl.load(x_ptr + base + cols, mask=cols < row_len, other=0.0)
    mean = tl.sum(total, axis=0) / row_len"""


@dataclass(frozen=True)
class RowNorm:
    kind: str  # layernorm | rmsnorm | groupnorm
    mistake: str | None = None

    family = "normalization"

    @property
    def title(self) -> str:
        return NORM_TITLES[self.kind]

    @property
    def centred(self) -> bool:
        return self.kind != "rmsnorm"

    def model_init(self) -> list[str]:
        if self.kind == "layernorm":
            return ["self.ln = nn.LayerNorm(hidden_size)"]
        if self.kind == "rmsnorm":
            return ["self.weight = nn.Parameter(torch.ones(hidden_size))", "self.eps = eps"]
        return ["self.gn = nn.GroupNorm(num_groups=num_groups, num_channels=num_features)"]

    def reference_forward(self) -> list[str]:
        if self.kind == "rmsnorm":
            return [
                "rms = torch.sqrt(torch.mean(x * x, dim=-1, keepdim=True) + self.eps)",
                "return x / rms * self.weight",
            ]
        return [f"return self.{'ln' if self.kind == 'layernorm' else 'gn'}(x)"]

    def mutations(self) -> list[tuple[str, RowNorm]]:
        return [(what, replace(self, mistake=m)) for m, what in NORM_MISTAKES[self.kind]]

    def torch_forward(self) -> list[str]:
        if self.kind == "rmsnorm":
            ms = "x.pow(2).mean(dim=-1, keepdim=True) + self.eps"
            inv = f"(1.0 / ({ms}))" if self.mistake == "no_sqrt" else f"torch.rsqrt({ms})"
            return [f"return x * {inv} * self.weight"]
        if self.kind == "layernorm":
            lines, v, mod, tail = [], "x", "self.ln", ["return y * self.ln.weight + self.ln.bias"]
        else:
            lines = ["n, c, h, w = x.shape", "g = x.reshape(n, self.gn.num_groups, -1)"]
            v, mod = "g", "self.gn"
            tail = [
                "y = y.reshape(n, c, h, w)",
                "return y * self.gn.weight.view(1, c, 1, 1) + self.gn.bias.view(1, c, 1, 1)",
            ]
        lines.append(f"mean = {v}.mean(dim=-1, keepdim=True)")
        spread = f"{v}.pow(2)" if self.mistake == "second_moment" else f"({v} - mean).pow(2)"
        lines.append(f"var = {spread}.mean(dim=-1, keepdim=True)")
        centred = v if self.mistake == "no_mean" else f"({v} - mean)"
        lines.append(f"y = {centred} * torch.rsqrt(var + {mod}.eps)")
        return lines + tail

    def _forward_args(self) -> str:
        return {
            "layernorm": "x, self.ln.weight, self.ln.bias, self.ln.eps",
            "rmsnorm": "x, self.weight, self.eps",
            "groupnorm": "x, self.gn.weight, self.gn.bias, self.gn.num_groups, self.gn.eps",
        }[self.kind]

    def _host_params(self, cuda: bool) -> str:
        t = "torch::Tensor " if cuda else ""
        params = [f"{t}x", f"{t}weight"] + ([f"{t}bias"] if self.centred else [])
        params += [f"{'int64_t ' if cuda else ''}num_groups"] if self.kind == "groupnorm" else []
        return ", ".join([*params, f"{'double ' if cuda else ''}eps"])

    def cuda(self, opt: KernelOptions) -> CudaKernel:
        groups = self.kind == "groupnorm"
        rows = (
            [
                "const int64_t rows = input.size(0) * num_groups;",
                "const int64_t row_len = rows > 0 ? input.numel() / rows : 0;",
                "const int64_t group_channels = input.size(1) / num_groups;",
                "const int64_t hw = input.size(2) * input.size(3);",
            ]
            if groups
            else [
                "const int64_t row_len = input.size(-1);",
                "const int64_t rows = row_len > 0 ? input.numel() / row_len : 0;",
            ]
        )
        source = CUDA_HEAD.substitute(tag=opt.tag, summary=f"{self.title}, one block per row", block=opt.block)
        source += _block_reduce("sum", "buf[threadIdx.x] + buf[threadIdx.x + s]")
        source += CUDA_ROW_NORM.substitute(
            fn=opt.fn,
            row_what="(sample, group)" if groups else "row",
            bias_param="const float* __restrict__ bias, " if self.centred else "",
            group_params="int64_t num_groups, int64_t group_channels, int64_t hw, " if groups else "",
            stats=indent(self._cuda_stats(), 4),
            write=indent(self._cuda_write(), 8),
            host_params=self._host_params(cuda=True),
            checks=CUDA_CHECKS,
            bias_prep="    auto b = bias.contiguous();\n" if self.centred else "",
            rows=indent(rows, 4),
            bias_arg="b.data_ptr<float>(), " if self.centred else "",
            group_args="num_groups, group_channels, hw, " if groups else "",
        )
        decl = f"torch::Tensor {opt.fn}({self._host_params(cuda=True)});"
        return CudaKernel(source, decl, opt.fn, [f"return ext.{opt.fn}({self._forward_args()})"])

    def _cuda_stats(self) -> list[str]:
        loop = "for (int64_t j = threadIdx.x; j < row_len; j += blockDim.x)"
        if not self.centred:
            inv = "1.0f / (ms + eps)" if self.mistake == "no_sqrt" else "rsqrtf(ms + eps)"
            return [
                "float sq = 0.0f;",
                f"{loop} sq += src[j] * src[j];",
                "const float ms = block_sum(sq, buf) / (float)row_len;",
                f"const float rstd = {inv};",
            ]
        diff = "src[j]" if self.mistake == "second_moment" else "src[j] - mean"
        return [
            "float total = 0.0f;",
            f"{loop} total += src[j];",
            "const float mean = block_sum(total, buf) / (float)row_len;",
            "float sq = 0.0f;",
            f"{loop} {{",
            f"    const float d = {diff};",
            "    sq += d * d;",
            "}",
            "const float rstd = rsqrtf(block_sum(sq, buf) / (float)row_len + eps);",
        ]

    def _cuda_write(self) -> list[str]:
        if not self.centred:
            return ["dst[j] = src[j] * rstd * weight[j];"]
        centred = "src[j]" if self.mistake == "no_mean" else "(src[j] - mean)"
        if self.kind == "layernorm":
            return [f"dst[j] = {centred} * rstd * weight[j] + bias[j];"]
        return [
            "const int64_t c = (row % num_groups) * group_channels + j / hw;",
            f"dst[j] = {centred} * rstd * weight[c] + bias[c];",
        ]

    def triton(self, opt: KernelOptions) -> TritonKernel:
        groups = self.kind == "groupnorm"
        if self.centred:
            diff = "vals" if self.mistake == "second_moment" else "tl.where(mask, vals - mean, 0.0)"
            rstd = "1.0 / tl.sqrt(tl.sum(acc, axis=0) / row_len + eps)"
        else:
            diff = "vals"
            spread = "tl.sum(acc, axis=0) / row_len + eps"
            rstd = f"1.0 / ({spread})" if self.mistake == "no_sqrt" else f"1.0 / tl.sqrt({spread})"
        rows = (
            [
                "rows = x.shape[0] * num_groups",
                "row_len = x.numel() // rows",
                "group_channels = x.shape[1] // num_groups",
                "hw = x.shape[2] * x.shape[3]",
            ]
            if groups
            else ["row_len = x.shape[-1]", "rows = x.numel() // row_len"]
        )
        code = TRITON_ROW_NORM.substitute(
            block=opt.block,
            fn=opt.fn,
            tag=opt.tag,
            summary=f"{self.title}, one program per row",
            bias_param="b_ptr, " if self.centred else "",
            group_params="num_groups, group_channels, hw, " if groups else "",
            mean=TRITON_MEAN if self.centred else "",
            diff=diff,
            rstd=rstd,
            write=indent(self._triton_write(), 8),
            host_params=self._host_params(cuda=False),
            rows=indent(rows, 4),
            bias_arg="bias.contiguous(), " if self.centred else "",
            group_args="num_groups, group_channels, hw, " if groups else "",
        )
        return TritonKernel(code, [f"return {opt.fn}({self._forward_args()})"])

    def _triton_write(self) -> list[str]:
        if not self.centred:
            return ["y = vals * rstd * tl.load(w_ptr + cols, mask=mask)"]
        index = "(row % num_groups) * group_channels + cols // hw" if self.kind == "groupnorm" else "cols"
        centred = "vals" if self.mistake == "no_mean" else "(vals - mean)"
        return [
            f"c = {index}",
            f"y = {centred} * rstd * tl.load(w_ptr + c, mask=mask) + tl.load(b_ptr + c, mask=mask)",
        ]
