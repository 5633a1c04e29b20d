"""Pointwise pipelines: an optional prologue (Linear or Conv2d) followed by elementwise steps.

One pipeline describes an elementwise problem (``x * scale + bias`` then an activation), a GEMM epilogue
(``nn.Linear`` then bias / activation / scale / residual) or a convolution epilogue (``nn.Conv2d`` then the
same, with per-channel parameters). Every step renders itself four ways: the reference PyTorch (in the problem
file), an equivalent but different PyTorch formula (plain-PyTorch solutions), CUDA C++ statements on a float
``v`` and Triton statements on a block ``v``. A wrong solution renders a mutated pipeline (``mutations``).

Index of the parameter an element uses, by layout: ``flat`` none; ``col`` the last dimension
(``i % cols``); ``chan`` the channel of an NCHW tensor (``(i / hw) % channels``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from string import Template
from typing import Any

from kernel_parts import CudaKernel, KernelOptions, TritonKernel, indent, wrap


@dataclass(frozen=True)
class Activation:
    """One activation as a template over ``$x`` (PyTorch) or ``$v`` (CUDA, Triton), parameters ``$p0``, ``$p1``."""

    title: str  # the KernelBench-style name part
    ref: str  # the reference's PyTorch expression
    alt: str  # an equivalent formula (plain-PyTorch solutions)
    cuda: str  # CUDA C++ expression of a float
    triton: str  # Triton expression of a block
    swap: str  # the activation a wrong solution applies instead (clearly different on every input range)


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(
        "ReLU", "torch.relu($x)", "torch.clamp($x, min=0.0)", "fmaxf($v, 0.0f)", "tl.maximum($v, 0.0)", "sigmoid"
    ),
    "gelu": Activation(
        "GELU",
        "torch.nn.functional.gelu($x)",
        "0.5 * $x * (1.0 + torch.erf($x * 0.7071067811865476))",
        "0.5f * $v * (1.0f + erff($v * 0.70710678118654752f))",
        "0.5 * $v * (1.0 + tl.erf($v * 0.7071067811865476))",
        "sigmoid",
    ),
    "sigmoid": Activation(
        "Sigmoid",
        "torch.sigmoid($x)",
        "1.0 / (1.0 + torch.exp(-$x))",
        "1.0f / (1.0f + expf(-$v))",
        "1.0 / (1.0 + tl.exp(-$v))",
        "relu",
    ),
    "swish": Activation(
        "Swish",
        "$x * torch.sigmoid($x)",
        "torch.nn.functional.silu($x)",
        "$v / (1.0f + expf(-$v))",
        "$v / (1.0 + tl.exp(-$v))",
        "sigmoid",
    ),
    "tanh": Activation(
        "Tanh",
        "torch.tanh($x)",
        "2.0 * torch.sigmoid(2.0 * $x) - 1.0",
        "tanhf($v)",
        "2.0 / (1.0 + tl.exp(-2.0 * $v)) - 1.0",
        "sigmoid",
    ),
    "hardtanh": Activation(
        "Hardtanh",
        "torch.nn.functional.hardtanh($x, min_val=$p0, max_val=$p1)",
        "torch.clamp($x, min=$p0, max=$p1)",
        "fminf(fmaxf($v, ${p0}f), ${p1}f)",
        "tl.minimum(tl.maximum($v, $p0), $p1)",
        "sigmoid",
    ),
    "leaky_relu": Activation(
        "LeakyReLU",
        "torch.nn.functional.leaky_relu($x, negative_slope=$p0)",
        "torch.where($x > 0, $x, $x * $p0)",
        "($v > 0.0f ? $v : $v * ${p0}f)",
        "tl.where($v > 0, $v, $v * $p0)",
        "sigmoid",
    ),
    "elu": Activation(
        "ELU",
        "torch.nn.functional.elu($x, alpha=$p0)",
        "torch.where($x > 0, $x, $p0 * torch.expm1($x))",
        "($v > 0.0f ? $v : ${p0}f * expm1f($v))",
        "tl.where($v > 0, $v, $p0 * (tl.exp($v) - 1.0))",
        "sigmoid",
    ),
    "softplus": Activation(
        "Softplus",
        "torch.nn.functional.softplus($x)",
        "torch.where($x > 20.0, $x, torch.log1p(torch.exp($x)))",
        "($v > 20.0f ? $v : log1pf(expf($v)))",
        "tl.where($v > 20.0, $v, tl.log(1.0 + tl.exp($v)))",
        "relu",
    ),
    "hardsigmoid": Activation(
        "HardSigmoid",
        "torch.nn.functional.hardsigmoid($x)",
        "torch.clamp($x / 6.0 + 0.5, min=0.0, max=1.0)",
        "fminf(fmaxf($v + 3.0f, 0.0f), 6.0f) / 6.0f",
        "tl.minimum(tl.maximum($v + 3.0, 0.0), 6.0) / 6.0",
        "relu",
    ),
    "relu6": Activation(
        "ReLU6",
        "torch.nn.functional.relu6($x)",
        "torch.clamp($x, min=0.0, max=6.0)",
        "fminf(fmaxf($v, 0.0f), 6.0f)",
        "tl.minimum(tl.maximum($v, 0.0), 6.0)",
        "sigmoid",
    ),
    "mish": Activation(
        "Mish",
        "torch.nn.functional.mish($x)",
        "$x * torch.tanh(torch.nn.functional.softplus($x))",
        "$v * tanhf($v > 20.0f ? $v : log1pf(expf($v)))",
        "$v * (2.0 / (1.0 + tl.exp(-2.0 * tl.where($v > 20.0, $v, tl.log(1.0 + tl.exp($v))))) - 1.0)",
        "relu",
    ),
    "hardswish": Activation(
        "HardSwish",
        "torch.nn.functional.hardswish($x)",
        "$x * torch.clamp($x + 3.0, min=0.0, max=6.0) / 6.0",
        "$v * fminf(fmaxf($v + 3.0f, 0.0f), 6.0f) / 6.0f",
        "$v * tl.minimum(tl.maximum($v + 3.0, 0.0), 6.0) / 6.0",
        "relu",
    ),
}

# Parameter choices of the activations that take them (literal constants in the forward, as KernelBench writes).
ACTIVATION_PARAMS: dict[str, list[tuple[float, ...]]] = {
    "hardtanh": [(-1.0, 1.0), (-0.5, 0.5), (-2.0, 2.0)],
    "leaky_relu": [(0.01,), (0.05,), (0.1,), (0.2,)],
    "elu": [(1.0,), (0.5,), (1.5,)],
}


def _fill(template: str, var: str, params: tuple[float, ...]) -> str:
    values: dict[str, Any] = {"x": var, "v": var}
    values.update({f"p{i}": repr(p) for i, p in enumerate(params)})
    return Template(template).substitute(values)


# ---- steps ------------------------------------------------------------------------------------------------
# Each step: title (name part), constants (module-level, passed to __init__), init_lines (Model.__init__),
# ref / alt (PyTorch lines on x), cuda (C++ lines on v, parameter index c), triton (lines on block v),
# tensors (attributes read by a kernel), scalars (attributes passed as floats), mutations (wrong variants).


@dataclass(frozen=True)
class Act:
    name: str
    params: tuple[float, ...] = ()

    @property
    def spec(self) -> Activation:
        return ACTIVATIONS[self.name]

    @property
    def title(self) -> str:
        return self.spec.title

    tensors: tuple[str, ...] = ()
    scalars: tuple[str, ...] = ()

    @property
    def constants(self) -> dict[str, Any]:
        return {}

    def init_lines(self) -> list[str]:
        return []

    def ref(self) -> list[str]:
        return [f"x = {_fill(self.spec.ref, 'x', self.params)}"]

    def alt(self) -> list[str]:
        return [f"x = {_fill(self.spec.alt, 'x', self.params)}"]

    def cuda(self) -> list[str]:
        return [f"v = {_fill(self.spec.cuda, 'v', self.params)};"]

    def triton(self) -> list[str]:
        return [f"v = {_fill(self.spec.triton, 'v', self.params)}"]

    def mutations(self) -> list[tuple[str, Step | None]]:
        swap = self.spec.swap
        found: list[tuple[str, Step | None]] = [
            (f"wrong activation: {ACTIVATIONS[swap].title} instead of {self.title}", Act(swap, default_params(swap)))
        ]
        if self.name == "hardtanh":  # bounds swapped: every output becomes min_val's value
            wrong = (self.params[1], self.params[0])
            found.append((f"Hardtanh bounds swapped: {wrong} instead of {self.params}", Act(self.name, wrong)))
        elif self.params:  # a slope / alpha four times too large: shows on every negative input
            wrong = (self.params[0] * 4,)
            found.append((f"wrong constant in {self.title}: {wrong} instead of {self.params}", Act(self.name, wrong)))
        return found


def default_params(name: str) -> tuple[float, ...]:
    return ACTIVATION_PARAMS[name][0] if name in ACTIVATION_PARAMS else ()


@dataclass(frozen=True)
class Scale:
    """``x * scaling_factor`` with a float passed to ``__init__``."""

    value: float
    divide: bool = False  # the mistake: divides by the factor

    title = "Scaling"
    tensors: tuple[str, ...] = ()
    scalars: tuple[str, ...] = ("scaling_factor",)

    @property
    def constants(self) -> dict[str, Any]:
        return {"scaling_factor": self.value}

    def init_lines(self) -> list[str]:
        return ["self.scaling_factor = scaling_factor"]

    def ref(self) -> list[str]:
        return ["x = x * self.scaling_factor"]

    def alt(self) -> list[str]:
        return ["x = x / self.scaling_factor" if self.divide else "x = torch.mul(x, self.scaling_factor)"]

    def cuda(self) -> list[str]:
        return ["v = v / scaling_factor;" if self.divide else "v = v * scaling_factor;"]

    def triton(self) -> list[str]:
        return ["v = v / scaling_factor" if self.divide else "v = v * scaling_factor"]

    def mutations(self) -> list[tuple[str, Step | None]]:
        return [("divides by the scaling factor instead of multiplying", replace(self, divide=True))]


@dataclass(frozen=True)
class ParamOp:
    """A learnable per-feature (or per-channel) tensor added (``bias``) or multiplied (``scale``)."""

    attr: str  # "bias" (added) or "scale" (multiplied)
    shape_name: str  # the __init__ argument giving its shape
    shape: tuple[int, ...] | None = None  # a shape constant of its own (KernelBench's bias_shape), or None

    @property
    def title(self) -> str:
        return "BiasAdd" if self.attr == "bias" else "Multiply"

    @property
    def op(self) -> str:
        return "+" if self.attr == "bias" else "*"

    @property
    def tensors(self) -> tuple[str, ...]:
        return (self.attr,)

    scalars: tuple[str, ...] = ()

    @property
    def constants(self) -> dict[str, Any]:
        return {self.shape_name: self.shape} if self.shape is not None else {}

    def init_lines(self) -> list[str]:
        return [f"self.{self.attr} = nn.Parameter(torch.randn({self.shape_name}))"]

    def ref(self) -> list[str]:
        return [f"x = x {self.op} self.{self.attr}"]

    def alt(self) -> list[str]:
        fn = "add" if self.attr == "bias" else "mul"
        return [f"x = torch.{fn}(x, self.{self.attr})"]

    def cuda(self) -> list[str]:
        return [f"v = v {self.op} {self.attr}[c];"]

    def triton(self) -> list[str]:
        return [f"v = v {self.op} tl.load({self.attr}_ptr + c, mask=mask)"]

    def mutations(self) -> list[tuple[str, Step | None]]:
        what = "bias add" if self.attr == "bias" else "scale multiply"
        return [(f"missing {what}", None)]


@dataclass(frozen=True)
class Residual:
    """Adds back the prologue's output (KernelBench's ``x + original_x``)."""

    title = "ResidualAdd"
    tensors: tuple[str, ...] = ()
    scalars: tuple[str, ...] = ()

    @property
    def constants(self) -> dict[str, Any]:
        return {}

    def init_lines(self) -> list[str]:
        return []

    def ref(self) -> list[str]:
        return ["x = x + residual"]

    def alt(self) -> list[str]:
        return ["x = torch.add(x, residual)"]

    def cuda(self) -> list[str]:
        return ["v = v + residual;"]

    def triton(self) -> list[str]:
        return ["v = v + residual"]

    def mutations(self) -> list[tuple[str, Step | None]]:
        return [("missing residual add", None)]


@dataclass(frozen=True)
class BatchNormEval:
    """Batch normalisation with stored statistics (inference form, no update), per channel of NCHW."""

    prefix: str  # attribute prefix: "" (a BatchNorm problem) or "bn_" (after a convolution)
    channels: str  # the __init__ argument giving the channel count
    no_sqrt: bool = False  # the mistake: divides by the variance instead of the standard deviation

    title = "BatchNorm"

    @property
    def scalars(self) -> tuple[str, ...]:
        return (self.names["eps"],)

    @property
    def names(self) -> dict[str, str]:
        return {k: f"{self.prefix}{k}" for k in ("weight", "bias", "running_mean", "running_var", "eps")}

    @property
    def tensors(self) -> tuple[str, ...]:
        n = self.names
        return (n["running_mean"], n["running_var"], n["weight"], n["bias"])

    @property
    def constants(self) -> dict[str, Any]:
        return {"eps": 1e-5}

    def init_lines(self) -> list[str]:
        n, ch = self.names, self.channels
        return [
            f"self.{n['weight']} = nn.Parameter(torch.randn({ch}))",
            f"self.{n['bias']} = nn.Parameter(torch.randn({ch}))",
            f'self.register_buffer("{n["running_mean"]}", torch.randn({ch}))',
            f'self.register_buffer("{n["running_var"]}", torch.rand({ch}) + 0.5)',
            f"self.{n['eps']} = eps",
        ]

    def ref(self) -> list[str]:
        n = self.names
        return [
            "x = torch.nn.functional.batch_norm(",
            f"    x, self.{n['running_mean']}, self.{n['running_var']}, self.{n['weight']}, self.{n['bias']},",
            f"    training=False, eps=self.{n['eps']},",
            ")",
        ]

    def alt(self) -> list[str]:
        n = self.names
        spread = f"(self.{n['running_var']} + self.{n['eps']})"
        inv = spread if self.no_sqrt else f"torch.sqrt{spread}"
        return [
            f"mul = (self.{n['weight']} / {inv}).view(1, -1, 1, 1)",
            f"x = (x - self.{n['running_mean']}.view(1, -1, 1, 1)) * mul + self.{n['bias']}.view(1, -1, 1, 1)",
        ]

    def cuda(self) -> list[str]:
        n = self.names
        spread = f"{n['running_var']}[c] + {n['eps']}"
        inv = f"(1.0f / ({spread}))" if self.no_sqrt else f"rsqrtf({spread})"
        return [f"v = (v - {n['running_mean']}[c]) * {inv} * {n['weight']}[c] + {n['bias']}[c];"]

    def triton(self) -> list[str]:
        n = self.names
        loads = [f"{k} = tl.load({n[k]}_ptr + c, mask=mask)" for k in ("running_mean", "running_var", "weight", "bias")]
        spread = f"running_var + {n['eps']}"
        inv = f"1.0 / ({spread})" if self.no_sqrt else f"1.0 / tl.sqrt({spread})"
        return [*loads, f"v = (v - running_mean) * ({inv}) * weight + bias"]

    def mutations(self) -> list[tuple[str, Step | None]]:
        return [("divides by the variance instead of the standard deviation", replace(self, no_sqrt=True))]


Step = Act | Scale | ParamOp | Residual | BatchNormEval


@dataclass(frozen=True)
class Pipeline:
    family: str  # elementwise | gemm_epilogue | convolution | normalization (a BatchNorm problem)
    prologue: str  # none | linear | conv2d
    layout: str  # flat | col | chan
    steps: tuple[Step, ...]
    same_padding: bool = False  # conv2d: padding=kernel_size // 2

    @property
    def title(self) -> str:
        prefix = {"none": [], "linear": ["Gemm"], "conv2d": ["Conv2d"]}[self.prologue]
        return "_".join([*prefix, *(s.title for s in self.steps)])

    @property
    def has_residual(self) -> bool:
        return any(isinstance(s, Residual) for s in self.steps)

    @property
    def tensors(self) -> list[str]:
        return [t for s in self.steps for t in s.tensors]

    @property
    def scalars(self) -> list[str]:
        found: list[str] = []
        for s in self.steps:
            found += [n for n in s.scalars if n not in found]
        return found

    def prologue_init(self) -> list[str]:
        if self.prologue == "linear":
            return ["self.gemm = nn.Linear(in_features, out_features)"]
        if self.prologue == "conv2d":
            pad = ", padding=kernel_size // 2" if self.same_padding else ""
            return [f"self.conv = nn.Conv2d(in_channels, out_channels, kernel_size{pad})"]
        return []

    def model_init(self) -> list[str]:
        return [*self.prologue_init(), *(line for s in self.steps for line in s.init_lines())]

    def reference_forward(self) -> list[str]:
        head = {"none": [], "linear": ["x = self.gemm(x)"], "conv2d": ["x = self.conv(x)"]}[self.prologue]
        return self._body(head, [line for s in self.steps for line in s.ref()])

    def torch_forward(self) -> list[str]:
        head = {
            "none": [],
            "linear": ["x = torch.nn.functional.linear(x, self.gemm.weight, self.gemm.bias)"],
            "conv2d": [
                "x = torch.nn.functional.conv2d(x, self.conv.weight, self.conv.bias, padding=self.conv.padding)"
            ],
        }[self.prologue]
        return self._body(head, [line for s in self.steps for line in s.alt()])

    def _body(self, head: list[str], steps: list[str]) -> list[str]:
        return [*head, *(["residual = x"] if self.has_residual else []), *steps, "return x"]

    def cuda(self, opt: KernelOptions) -> CudaKernel:
        return cuda_pointwise(self, fn=opt.fn, tag=opt.tag, block=opt.block, fuse_mm=opt.fuse_mm, hang=opt.hang)

    def triton(self, opt: KernelOptions) -> TritonKernel:
        return triton_pointwise(self, fn=opt.fn, tag=opt.tag, block=opt.block, fuse_mm=opt.fuse_mm)

    def mutations(self) -> list[tuple[str, Pipeline]]:
        """Each way a wrong solution can differ: one step changed or left out."""
        found: list[tuple[str, Pipeline]] = []
        for i, step in enumerate(self.steps):
            for what, new in step.mutations():
                rest = self.steps[:i] + ((new,) if new is not None else ()) + self.steps[i + 1 :]
                found.append((what, replace(self, steps=rest)))
        return found


# ---- CUDA -------------------------------------------------------------------------------------------------

CUDA_POINTWISE = Template(
    """\
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <cmath>

// $tag: $summary
constexpr int kBlock = $block;

$kernel_head
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
$body
        out[i] = v;
    }
$barrier}

$host_head
    TORCH_CHECK(x.is_cuda(), "$fn: x must be a CUDA tensor");
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, "$fn: x must be float32");
$host_prep
    auto out = torch::empty_like(input);
    const int64_t n = input.numel();
    if (n == 0) return out;
$host_sizes
    const int blocks = (int)std::min<int64_t>((n + kBlock - 1) / kBlock, 65535LL * 16);
$launch
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}
"""
)

# The one solution meant to hang: a grid-wide "barrier" that waits for one block more than the grid has.
CUDA_BARRIER = """\
    // Grid-wide barrier: the output is complete once every block has arrived.
    __syncthreads();
    if (threadIdx.x == 0) {
        atomicAdd(arrived, 1);
        while (atomicAdd(arrived, 0) <= (int)gridDim.x) {
        }
    }
"""


def _index_lines(layout: str, var: str = "i") -> list[str]:
    if layout == "col":
        return [f"const int64_t c = {var} % cols;"]
    if layout == "chan":
        return [f"const int64_t c = ({var} / hw) % channels;"]
    return []


def _size_params(layout: str) -> list[str]:
    return {"flat": [], "col": ["cols"], "chan": ["hw", "channels"]}[layout]


def cuda_pointwise(p: Pipeline, *, fn: str, tag: str, block: int, fuse_mm: bool, hang: bool = False) -> CudaKernel:
    """The pipeline as one CUDA kernel. ``fuse_mm``: the C++ side runs the GEMM (``torch::mm``) and the
    kernel adds the Linear's bias; otherwise the prologue runs in Python and the kernel takes its output."""
    fuse_mm = fuse_mm and p.prologue == "linear"
    tensors = (["gemm_bias"] if fuse_mm else []) + p.tensors
    body = [*_index_lines(p.layout), f"float v = x[i]{' + gemm_bias[c]' if fuse_mm else ''};"]
    body += ["const float residual = v;"] if p.has_residual else []
    body += [line for s in p.steps for line in s.cuda()]
    kernel_params = ["const float* __restrict__ x"] + [f"const float* __restrict__ {t}" for t in tensors]
    kernel_params += ["float* __restrict__ out", "int64_t n"] + [f"int64_t {s}" for s in _size_params(p.layout)]
    kernel_params += [f"float {s}" for s in p.scalars] + (["int* __restrict__ arrived"] if hang else [])
    host_params = ["torch::Tensor x"] + (["torch::Tensor weight"] if fuse_mm else [])
    host_params += [f"torch::Tensor {t}" for t in tensors] + [f"double {s}" for s in p.scalars]
    prep = ["auto input = torch::mm(x.contiguous(), weight.t());" if fuse_mm else "auto input = x.contiguous();"]
    prep += [f"auto {t}_c = {t}.contiguous();" for t in tensors]
    sizes = {"flat": [], "col": ["const int64_t cols = input.size(-1);"]}.get(
        p.layout, ["const int64_t channels = input.size(1);", "const int64_t hw = input.size(2) * input.size(3);"]
    )
    sizes += ["auto arrived = torch::zeros({1}, input.options().dtype(torch::kInt32));"] if hang else []
    launch = ["input.data_ptr<float>()"] + [f"{t}_c.data_ptr<float>()" for t in tensors]
    launch += ["out.data_ptr<float>()", "n", *_size_params(p.layout)] + [f"(float){s}" for s in p.scalars]
    launch += ["arrived.data_ptr<int>()"] if hang else []
    source = CUDA_POINTWISE.substitute(
        tag=tag,
        summary=f"{p.title}, one fused pass over the {'GEMM ' if p.prologue == 'linear' else ''}output",
        block=block,
        fn=fn,
        kernel_head=wrap(kernel_params, f"__global__ void {fn}_kernel(", ") {"),
        body=indent(body, 8),
        barrier=CUDA_BARRIER if hang else "",
        host_head=wrap(host_params, f"torch::Tensor {fn}(", ") {"),
        host_prep=indent(prep, 4),
        host_sizes=indent(sizes, 4),
        launch=wrap(launch, f"    {fn}_kernel<<<blocks, kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(", ");", 8),
    )
    return CudaKernel(source, f"torch::Tensor {fn}({', '.join(host_params)});", fn, _kernel_forward(p, fn, fuse_mm))


def _prologue_python(p: Pipeline, fuse_mm: bool) -> tuple[list[str], list[str]]:
    """Lines before the kernel call, and the call's leading arguments."""
    if p.prologue == "linear":
        if fuse_mm:
            return [], ["x", "self.gemm.weight", "self.gemm.bias"]
        return ["y = torch.nn.functional.linear(x, self.gemm.weight, self.gemm.bias)"], ["y"]
    if p.prologue == "conv2d":
        return ["y = self.conv(x)"], ["y"]
    return [], ["x"]


def _kernel_forward(p: Pipeline, fn: str, fuse_mm: bool, module: str = "ext.") -> list[str]:
    head, args = _prologue_python(p, fuse_mm)
    args += [f"self.{t}" for t in p.tensors] + [f"self.{s}" for s in p.scalars]
    return [*head, f"return {module}{fn}({', '.join(args)})"]


# ---- Triton -----------------------------------------------------------------------------------------------

TRITON_POINTWISE = Template(
    """\
BLOCK_SIZE = $block


@triton.jit
$kernel_head
    # $tag: $summary
    pid = tl.program_id(axis=0)
    offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
$body
    tl.store(out_ptr + offsets, v, mask=mask)


def $fn($host_params):
    x = x.contiguous()
    out = torch.empty_like(x)
    n_elements = x.numel()
    grid = (triton.cdiv(n_elements, BLOCK_SIZE),)
    ${fn}_kernel[grid]($launch_args, BLOCK_SIZE=BLOCK_SIZE)
    return out
"""
)


def triton_pointwise(p: Pipeline, *, fn: str, tag: str, block: int, fuse_mm: bool) -> TritonKernel:
    """The pipeline as one Triton kernel; with ``fuse_mm`` the GEMM runs as ``torch.mm`` and the kernel adds
    the Linear's bias."""
    fuse_mm = fuse_mm and p.prologue == "linear"
    tensors = (["gemm_bias"] if fuse_mm else []) + p.tensors
    index = {"flat": [], "col": ["c = offsets % cols"], "chan": ["c = (offsets // hw) % channels"]}[p.layout]
    body = ["v = tl.load(x_ptr + offsets, mask=mask)", *index]
    body += ["v = v + tl.load(gemm_bias_ptr + c, mask=mask)"] if fuse_mm else []
    body += ["residual = v"] if p.has_residual else []
    body += [line for s in p.steps for line in s.triton()]
    kernel_params = ["x_ptr", *(f"{t}_ptr" for t in tensors), "out_ptr", "n_elements", *_size_params(p.layout)]
    kernel_params += p.scalars
    size_args = {"flat": [], "col": ["x.shape[-1]"], "chan": ["x.shape[2] * x.shape[3]", "x.shape[1]"]}[p.layout]
    launch = ["x", *(f"{t}.contiguous()" for t in tensors), "out", "n_elements", *size_args, *p.scalars]
    code = TRITON_POINTWISE.substitute(
        block=block,
        fn=fn,
        tag=tag,
        summary=f"{p.title}, one fused pass",
        kernel_head=wrap([*kernel_params, "BLOCK_SIZE: tl.constexpr"], f"def {fn}_kernel(", "):"),
        body=indent(body, 4),
        host_params=", ".join(["x", *tensors, *p.scalars]),
        launch_args=", ".join(launch),
    )
    if fuse_mm:
        forward = ["y = torch.mm(x, self.gemm.weight.t())"]
        args = ["y", "self.gemm.bias"]
    else:
        forward, args = _prologue_python(p, False)
    args += [f"self.{t}" for t in p.tensors] + [f"self.{s}" for s in p.scalars]
    return TritonKernel(code, [*forward, f"return {fn}({', '.join(args)})"])
