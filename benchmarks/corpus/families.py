"""Problem families: which problems exist, at which sizes, and their KernelBench-format files.

Level 1 holds single operations (elementwise activations, reductions, normalisations), level 2 fused ones
(GEMM epilogues, convolution epilogues), as in KernelBench. Sizes are drawn so that one reference call reads
and writes 16M-64M elements (elementwise, reductions, normalisations) or does 1-70 GFLOP (GEMM, convolution):
~0.05-5 ms on an H200, well under 2 GB of GPU memory per problem.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from string import Template
from typing import Any

from kernel_parts import indent
from pointwise import ACTIVATION_PARAMS, ACTIVATIONS, Act, BatchNormEval, ParamOp, Pipeline, Residual, Scale, Step
from rowwise import REDUCE_OPS, Reduction, RowNorm

Recipe = Pipeline | Reduction | RowNorm

FAMILIES = ("elementwise", "reduction", "normalization", "gemm_epilogue", "convolution")
FAMILY_SHARE = {"elementwise": 0.25, "reduction": 0.2, "normalization": 0.15, "gemm_epilogue": 0.2, "convolution": 0.2}
FAMILY_LEVEL = {"elementwise": 1, "reduction": 1, "normalization": 1, "gemm_epilogue": 2, "convolution": 2}

MIN_ELEMENTS, MAX_ELEMENTS = 16 * 2**20, 64 * 2**20
SCALES = [0.5, 2.0, 1.5, 0.25, 3.0, 0.1]  # scaling factors (never 1: dividing by one would not be a mistake)
# (std, mean) of normalisation inputs: the mean is large enough that forgetting to subtract it shows
INPUT_SPREADS = [(1.0, 1.0), (2.0, 1.0), (2.0, -1.5), (1.5, 1.0), (0.5, 0.5)]


@dataclass(frozen=True)
class Draft:
    """A problem before it is numbered."""

    family: str
    name: str
    recipe: Recipe
    constants: dict[str, Any]  # module-level constants, in order (sizes, then the rest)
    small: dict[str, Any]  # KBENCH_SMALL_SIZES: the constants at CPU-test sizes
    init_params: tuple[str, ...]  # Model.__init__'s parameters
    init_args: tuple[str, ...]  # the constants get_init_inputs passes for them
    inputs: str  # get_inputs' tensor expression
    doc: str


@dataclass(frozen=True)
class Problem:
    level: int
    number: int
    draft: Draft

    @property
    def stem(self) -> str:
        return f"{self.number}_{self.draft.name}"

    @property
    def path(self) -> str:
        return f"problems/level{self.level}/{self.stem}.py"

    def __getattr__(self, name: str) -> Any:  # family, recipe, constants, ... come from the draft
        if name.startswith("__") or name == "draft":
            raise AttributeError(name)
        return getattr(self.draft, name)


def sample_sizes(rng: random.Random, choices: dict[str, list[int]], accept: Callable[[dict[str, int]], bool]) -> dict:
    for _ in range(100_000):
        sizes = {k: rng.choice(v) for k, v in choices.items()}
        if accept(sizes):
            return sizes
    raise RuntimeError(f"no sizes from {choices} pass the size rule")


def elements_ok(n: int) -> bool:
    return MIN_ELEMENTS <= n <= MAX_ELEMENTS


def _product(*values: int) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def step_constants(steps: tuple[Step, ...]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for s in steps:
        found.update(s.constants)
    return found


def random_activation(rng: random.Random) -> Act:
    name = rng.choice(list(ACTIVATIONS))
    return Act(name, rng.choice(ACTIVATION_PARAMS[name]) if name in ACTIVATION_PARAMS else ())


# ---- elementwise (level 1) --------------------------------------------------------------------------------


def pure_activation(rng: random.Random, name: str) -> Draft:
    act = Act(name, rng.choice(ACTIVATION_PARAMS[name]) if name in ACTIVATION_PARAMS else ())
    sizes = sample_sizes(
        rng,
        {"batch_size": [16, 32, 64, 128, 256], "dim": [65536, 131072, 262144, 524288]},
        lambda s: elements_ok(s["batch_size"] * s["dim"]),
    )
    return Draft(
        family="elementwise",
        name=act.title,
        recipe=Pipeline("elementwise", "none", "flat", (act,)),
        constants=sizes,
        small={"batch_size": 4, "dim": 256},
        init_params=(),
        init_args=(),
        inputs="torch.randn(batch_size, dim)",
        doc=f"Applies {act.title} elementwise.",
    )


def affine_activation(rng: random.Random) -> Draft:
    pre: list[Step] = rng.choice(
        [
            [ParamOp("scale", "features"), ParamOp("bias", "features")],
            [ParamOp("scale", "features")],
            [ParamOp("bias", "features")],
            [Scale(rng.choice(SCALES))],
        ]
    )
    post_choices: list[list[Step]] = [[], [], [Residual()]]
    if not isinstance(pre[0], Scale):
        post_choices.append([Scale(rng.choice(SCALES))])
    post = rng.choice(post_choices)
    steps = (*pre, random_activation(rng), *post)
    params = any(isinstance(s, ParamOp) for s in steps)
    sizes = sample_sizes(
        rng,
        {"batch_size": [1024, 2048, 4096, 8192, 16384], "features": [1024, 2048, 4096, 8192]},
        lambda s: elements_ok(s["batch_size"] * s["features"]),
    )
    extra = step_constants(steps)
    recipe = Pipeline("elementwise", "none", "col" if params else "flat", steps)
    init = (("features",) if params else ()) + tuple(extra)
    return Draft(
        family="elementwise",
        name=recipe.title,
        recipe=recipe,
        constants={**sizes, **extra},
        small={"batch_size": 8, "features": 64},
        init_params=init,
        init_args=init,
        inputs="torch.randn(batch_size, features)",
        doc=f"{' -> '.join(s.title for s in steps)} over (batch_size, features).",
    )


def elementwise_drafts(rng: random.Random, count: int) -> list[Draft]:
    names = list(ACTIVATIONS)
    rng.shuffle(names)
    n_pure = min(len(names), round(count * 0.6))
    drafts = [pure_activation(rng, name) for name in names[:n_pure]]
    return drafts + unique_drafts(rng, count - n_pure, affine_activation, {d.name for d in drafts})


def unique_drafts(rng: random.Random, count: int, make: Callable[[random.Random], Draft], taken: set[str]) -> list:
    """``count`` drafts from ``make`` with names not yet taken (repeats allowed once the names run out)."""
    drafts: list[Draft] = []
    for _ in range(count):
        for _attempt in range(200):
            draft = make(rng)
            if draft.name not in taken:
                break
        taken.add(draft.name)
        drafts.append(draft)
    return drafts


# ---- GEMM epilogues and convolutions (level 2) ------------------------------------------------------------


def epilogue_steps(rng: random.Random, shape: tuple[int, ...], conv: bool) -> tuple[Step, ...]:
    bias, scale = ParamOp("bias", "bias_shape", shape), ParamOp("scale", "scale_shape", shape)
    pre_choices: list[list[Step]] = [[], [Scale(rng.choice(SCALES))], [bias], [scale]]
    if conv:
        pre_choices.append([BatchNormEval("bn_", "out_channels")])
    pre = rng.choice(pre_choices)
    post_choices: list[list[Step]] = [[], [Scale(rng.choice(SCALES))], [bias], [Residual()]]
    post = rng.choice([p for p in post_choices if not p or type(p[0]) not in {type(s) for s in pre}])
    return (*pre, random_activation(rng), *post)


def gemm_draft(rng: random.Random) -> Draft:
    sizes = sample_sizes(
        rng,
        {
            "batch_size": [128, 256, 512, 1024, 2048, 4096],
            "in_features": [1024, 2048, 4096, 8192],
            "out_features": [1024, 2048, 4096, 8192],
        },
        lambda s: (
            2e9 <= 2 * s["batch_size"] * s["in_features"] * s["out_features"] <= 7e10
            and s["batch_size"] * s["out_features"] <= 32 * 2**20
        ),
    )
    steps = epilogue_steps(rng, (sizes["out_features"],), conv=False)
    extra = step_constants(steps)
    small_out = 32
    small = {"batch_size": 8, "in_features": 64, "out_features": small_out}
    small.update({k: (small_out,) for k in extra if k.endswith("_shape")})
    recipe = Pipeline("gemm_epilogue", "linear", "col", steps)
    init = ("in_features", "out_features", *extra)
    return Draft(
        family="gemm_epilogue",
        name=recipe.title,
        recipe=recipe,
        constants={**sizes, **extra},
        small=small,
        init_params=init,
        init_args=init,
        inputs="torch.randn(batch_size, in_features)",
        doc=f"Linear -> {' -> '.join(s.title for s in steps)}.",
    )


def conv_draft(rng: random.Random) -> Draft:
    def accept(s: dict[str, int]) -> bool:
        side = s["height"] - s["kernel_size"] + 1
        out = s["batch_size"] * s["out_channels"] * side * side
        flops = 2 * out * s["in_channels"] * s["kernel_size"] ** 2
        inputs = s["batch_size"] * s["in_channels"] * s["height"] ** 2
        return 4 * 2**20 <= out <= MAX_ELEMENTS and inputs <= MAX_ELEMENTS and 1e9 <= flops <= 6e10

    sizes = sample_sizes(
        rng,
        {
            "batch_size": [8, 16, 32, 64, 128],
            "in_channels": [3, 8, 16, 32, 64],
            "out_channels": [16, 32, 64, 128],
            "height": [32, 64, 128, 256],
            "kernel_size": [3, 5],
        },
        accept,
    )
    sizes = {**sizes, "width": sizes["height"]}
    sizes = {k: sizes[k] for k in ("batch_size", "in_channels", "out_channels", "height", "width", "kernel_size")}
    steps = epilogue_steps(rng, (sizes["out_channels"], 1, 1), conv=True)
    extra = step_constants(steps)
    small_out = 8
    small = {"batch_size": 2, "in_channels": 3, "out_channels": small_out, "height": 12, "width": 12}
    small.update({k: (small_out, 1, 1) for k in extra if k.endswith("_shape")})
    recipe = Pipeline("convolution", "conv2d", "chan", steps, same_padding=rng.random() < 0.3)
    init = ("in_channels", "out_channels", "kernel_size", *extra)
    return Draft(
        family="convolution",
        name=recipe.title,
        recipe=recipe,
        constants={**sizes, **extra},
        small=small,
        init_params=init,
        init_args=init,
        inputs="torch.randn(batch_size, in_channels, height, width)",
        doc=f"Conv2d -> {' -> '.join(s.title for s in steps)}.",
    )


# ---- reductions (level 1) ---------------------------------------------------------------------------------


def reduction_draft(rng: random.Random, op: str) -> Draft:
    spec = REDUCE_OPS[op]
    recipe = Reduction(op)
    if spec.axis:
        sizes = sample_sizes(
            rng,
            {"batch_size": [16, 32, 64, 128], "dim1": [256, 512, 1024, 2048, 4096], "dim2": [256, 512, 1024, 4096]},
            lambda s: elements_ok(s["batch_size"] * s["dim1"] * s["dim2"]),
        )
        dim = rng.choice([1, 2])
        return Draft(
            family="reduction",
            name=spec.title,
            recipe=recipe,
            constants={**sizes, "reduce_dim": dim},
            small={"batch_size": 4, "dim1": 16, "dim2": 24},
            init_params=("dim",),
            init_args=("reduce_dim",),
            inputs="torch.randn(batch_size, dim1, dim2)",
            doc=f"{spec.title.split('_')[0]} over one dimension of a (batch_size, dim1, dim2) tensor.",
        )
    sizes = sample_sizes(
        rng,
        {"batch_size": [16, 32, 64, 128, 256], "dim": [16384, 65536, 131072, 262144, 524288]},
        lambda s: elements_ok(s["batch_size"] * s["dim"]),
    )
    return Draft(
        family="reduction",
        name=spec.title,
        recipe=recipe,
        constants=sizes,
        small={"batch_size": 4, "dim": 256},
        init_params=(),
        init_args=(),
        inputs="torch.randn(batch_size, dim)",
        doc=f"{spec.title} over dim 1 of a (batch_size, dim) tensor.",
    )


def reduction_drafts(rng: random.Random, count: int) -> list[Draft]:
    ops = [op for _ in range(count // len(REDUCE_OPS) + 1) for op in REDUCE_OPS][:count]
    return [reduction_draft(rng, op) for op in ops]


# ---- normalisations (level 1) -----------------------------------------------------------------------------


def spread_inputs(rng: random.Random, shape: str) -> str:
    std, mean = rng.choice(INPUT_SPREADS)
    return f"torch.randn({shape}) * {std!r} + {mean!r}"


def norm_draft(rng: random.Random, kind: str) -> Draft:
    if kind in ("layernorm", "rmsnorm"):
        sizes = sample_sizes(
            rng,
            {"batch_size": [8, 16, 32, 64], "seq_len": [256, 512, 1024, 2048], "hidden_size": [1024, 2048, 4096, 8192]},
            lambda s: elements_ok(s["batch_size"] * s["seq_len"] * s["hidden_size"]),
        )
        extra = {"eps": 1e-6} if kind == "rmsnorm" else {}
        recipe = RowNorm(kind)
        return Draft(
            family="normalization",
            name=recipe.title,
            recipe=recipe,
            constants={**sizes, **extra},
            small={"batch_size": 2, "seq_len": 8, "hidden_size": 64},
            init_params=("hidden_size", *extra),
            init_args=("hidden_size", *extra),
            inputs=spread_inputs(rng, "batch_size, seq_len, hidden_size"),
            doc=f"{recipe.title} over the last dimension of a (batch_size, seq_len, hidden_size) tensor.",
        )
    choices = {
        "batch_size": [8, 16, 32, 64, 128],
        "num_features": [16, 32, 64, 128, 256],
        "height": [32, 64, 128, 256],
    }
    if kind == "groupnorm":
        choices["num_groups"] = [4, 8, 16, 32]
    sizes = sample_sizes(
        rng,
        choices,
        lambda s: (
            elements_ok(s["batch_size"] * s["num_features"] * s["height"] ** 2)
            and s["num_features"] // s.get("num_groups", 1) >= 2
            and s["num_features"] % s.get("num_groups", 1) == 0
        ),
    )
    groups = sizes.pop("num_groups", None)
    sizes["width"] = sizes["height"]
    shape = "batch_size, num_features, height, width"
    if kind == "groupnorm":
        recipe = RowNorm("groupnorm")
        return Draft(
            family="normalization",
            name="GroupNorm",
            recipe=recipe,
            constants={**sizes, "num_groups": groups},
            small={"batch_size": 2, "num_features": 2 * groups, "height": 6, "width": 6},
            init_params=("num_features", "num_groups"),
            init_args=("num_features", "num_groups"),
            inputs=spread_inputs(rng, shape),
            doc="GroupNorm over an NCHW tensor.",
        )
    step = BatchNormEval("", "num_features")
    return Draft(
        family="normalization",
        name="BatchNorm2d_Inference",
        recipe=Pipeline("normalization", "none", "chan", (step,)),
        constants={**sizes, **step.constants},
        small={"batch_size": 2, "num_features": 8, "height": 6, "width": 6},
        init_params=("num_features", "eps"),
        init_args=("num_features", "eps"),
        inputs=f"torch.randn({shape})",
        doc="BatchNorm2d in inference form: normalises with the stored running statistics, updates nothing.",
    )


def norm_drafts(rng: random.Random, count: int) -> list[Draft]:
    kinds = ["layernorm", "rmsnorm", "batchnorm", "groupnorm"]
    return [norm_draft(rng, kinds[i % len(kinds)]) for i in range(count)]


# ---- the whole set ----------------------------------------------------------------------------------------


def family_counts(total: int) -> dict[str, int]:
    """``total`` split by FAMILY_SHARE (largest remainders), every family at least one."""
    raw = {f: total * FAMILY_SHARE[f] for f in FAMILIES}
    counts = {f: max(1, int(raw[f])) for f in FAMILIES}
    for f in sorted(FAMILIES, key=lambda f: raw[f] - int(raw[f]), reverse=True):
        if sum(counts.values()) >= total:
            break
        counts[f] += 1
    return counts


def build_problems(rng: random.Random, total: int) -> list[Problem]:
    counts = family_counts(total)
    makers: dict[str, Callable[[random.Random, int], list[Draft]]] = {
        "elementwise": elementwise_drafts,
        "reduction": reduction_drafts,
        "normalization": norm_drafts,
        "gemm_epilogue": lambda r, n: unique_drafts(r, n, gemm_draft, set()),
        "convolution": lambda r, n: unique_drafts(r, n, conv_draft, set()),
    }
    problems: list[Problem] = []
    next_number = {1: 1, 2: 1}
    for family in FAMILIES:
        level = FAMILY_LEVEL[family]
        for draft in makers[family](rng, counts[family]):
            problems.append(Problem(level, next_number[level], draft))
            next_number[level] += 1
    return problems


# ---- the problem file -------------------------------------------------------------------------------------

PROBLEM_FILE = Template(
    '''\
import torch
import torch.nn as nn


class Model(nn.Module):
    """$doc"""

    def __init__(self$init_sig):
        super().__init__()$init_body

    def forward(self, x):
$forward


$constants

# Small sizes for CPU runs (kbench applies them automatically on the CPU).
KBENCH_SMALL_SIZES = $small


def get_inputs():
    return [$inputs]


def get_init_inputs():
    return [$init_args]
'''
)


def init_signature(params: tuple[str, ...]) -> str:
    return "".join(f", {p}" for p in params)


def init_body(lines: list[str]) -> str:
    return "\n" + indent(lines, 8) if lines else ""


def literal_dict(values: dict[str, Any]) -> str:
    return "{" + ", ".join(f'"{k}": {v!r}' for k, v in values.items()) + "}"


def render_problem(problem: Problem) -> str:
    return PROBLEM_FILE.substitute(
        doc=problem.doc,
        init_sig=init_signature(problem.init_params),
        init_body=init_body(problem.recipe.model_init()),
        forward=indent(problem.recipe.reference_forward(), 8),
        constants="\n".join(f"{k} = {v!r}" for k, v in problem.constants.items()),
        small=literal_dict(problem.small),
        inputs=problem.inputs,
        init_args=", ".join(problem.init_args),
    )
