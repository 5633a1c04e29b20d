"""Solutions: which kind and outcome each sample gets, and its file.

Kinds: ``cuda`` (a load_inline extension of its own), ``pytorch`` (an equivalent formula in plain PyTorch),
``triton`` (an @triton.jit kernel). Outcomes: ``correct``; ``wrong`` (one realistic mistake: a wrong
constant, a missing bias, a wrong activation, an off-by-one reduction...); ``compile_error`` (the CUDA text
does not compile; the Python is valid); ``hang`` (a CUDA grid barrier that waits for one block too many).

ModelNew always builds the same parameters as Model, in the same order and under the same names, so that the
seeded construction gives both the same weights.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from string import Template

from families import Problem, Recipe, init_body, init_signature
from kernel_parts import CudaKernel, KernelOptions, indent
from pointwise import Pipeline

KINDS = ("cuda", "pytorch", "triton")
OUTCOMES = ("correct", "wrong", "compile_error", "hang")
EXPECTED_VERDICT = {"correct": "correct", "wrong": "incorrect", "compile_error": "compile_error", "hang": "timeout"}
KIND_SHARE = {"triton": 0.10, "pytorch": 0.15}  # the rest are CUDA
WRONG_SHARE = 0.10
MAX_SAMPLES = 6  # per problem


@dataclass(frozen=True)
class Planned:
    problem: Problem
    sample: int
    kind: str
    outcome: str

    @property
    def file(self) -> str:
        return f"solutions/level_{self.problem.level}_problem_{self.problem.number}_sample_{self.sample}_kernel.py"

    @property
    def tag(self) -> str:
        return f"level {self.problem.level} problem {self.problem.number} sample {self.sample}"


def compile_error_count(total: int) -> int:
    return min(5, max(3, round(total / 50)))


def samples_per_problem(rng: random.Random, n_problems: int, total: int) -> list[int]:
    counts = [1] * n_problems
    for _ in range(total - n_problems):
        open_ = [i for i, c in enumerate(counts) if c < MAX_SAMPLES]
        counts[rng.choice(open_)] += 1
    return counts


def plan_solutions(rng: random.Random, problems: list[Problem], total: int) -> list[Planned]:
    """Every problem gets at least one sample; kinds and outcomes are dealt over a shuffled order of them."""
    if total < max(len(problems), 20) or total > MAX_SAMPLES * len(problems):
        raise ValueError(f"--solutions must be between max(problems, 20) and {MAX_SAMPLES} x problems")
    counts = samples_per_problem(rng, len(problems), total)
    slots = [(p, s) for p, c in zip(problems, counts, strict=True) for s in range(c)]
    order = list(range(len(slots)))
    rng.shuffle(order)
    n_triton, n_torch = (round(total * KIND_SHARE[k]) for k in ("triton", "pytorch"))
    kind = {}
    for k, i in enumerate(order):
        kind[i] = "triton" if k < n_triton else "pytorch" if k < n_triton + n_torch else "cuda"
    outcome = dict.fromkeys(order, "correct")

    def take(n: int, want: str, label: str, ok: Callable[[Problem], bool] = lambda p: True) -> None:
        free = [i for i in order if kind[i] == want and outcome[i] == "correct" and ok(slots[i][0])]
        if len(free) < n:
            raise ValueError(f"too few {want} solutions for {n} planned as {label}")
        for i in free[:n]:
            outcome[i] = label

    take(1, "cuda", "hang", lambda p: p.family == "elementwise" and isinstance(p.recipe, Pipeline))
    take(compile_error_count(total), "cuda", "compile_error")
    n_wrong = round(total * WRONG_SHARE)
    wrong_torch, wrong_triton = max(2, round(n_torch * WRONG_SHARE)), max(1, round(n_triton * WRONG_SHARE))
    take(wrong_torch, "pytorch", "wrong")
    take(wrong_triton, "triton", "wrong")
    take(max(0, n_wrong - wrong_torch - wrong_triton), "cuda", "wrong")
    planned = [Planned(slots[i][0], slots[i][1], kind[i], outcome[i]) for i in range(len(slots))]
    return sorted(planned, key=lambda s: (s.problem.level, s.problem.number, s.sample))


# ---- compile errors ---------------------------------------------------------------------------------------


def _drop_block_semicolon(src: str) -> str:
    return re.sub(r"(constexpr int kBlock = \d+);", r"\1", src, count=1)


COMPILE_ERRORS: list[tuple[str, Callable[[str], str]]] = [
    (
        "undeclared identifier: the block size is declared as kBlockSize, used as kBlock",
        lambda s: s.replace("constexpr int kBlock =", "constexpr int kBlockSize =", 1),
    ),
    ("syntax error: missing semicolon after the block-size constant", _drop_block_semicolon),
    ("syntax error: kernel launch closed with '>>' instead of '>>>'", lambda s: s.replace(">>>(", ">>(", 1)),
    (
        "type error: the kernel's input is declared float4 but read as float",
        lambda s: s.replace("const float* __restrict__ x", "const float4* __restrict__ x", 1),
    ),
]


def break_source(source: str, index: int) -> tuple[str, str]:
    what, change = COMPILE_ERRORS[index % len(COMPILE_ERRORS)]
    broken = change(source)
    if broken == source:
        raise AssertionError(f"compile error '{what}' found nothing to change")
    return broken, what


# ---- files ------------------------------------------------------------------------------------------------

HEADER = "# kbench corpus: $tag ($problem), $kind solution"

MODEL_NEW = Template(
    '''

class ModelNew(nn.Module):
    """$doc"""

    def __init__(self$init_sig):
        super().__init__()$init_body

    def forward(self, x):
$forward
'''
)

CUDA_MODULE = Template(
    '''\
$header
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

cuda_source = r"""
$source"""

cpp_source = "$decl"

ext = load_inline(
    name="$ext_name",
    cpp_sources=cpp_source,
    cuda_sources=cuda_source,
    functions=["$function"],
    extra_cuda_cflags=["-O3"],
    verbose=False,
)
'''
)

TRITON_MODULE = Template(
    """\
$header
import torch
import torch.nn as nn
import triton
import triton.language as tl

KBENCH_DEVICES = ["cuda"]

$code"""
)

TORCH_MODULE = Template(
    """\
$header
import torch
import torch.nn as nn
"""
)


@dataclass(frozen=True)
class Rendered:
    text: str
    detail: str  # what the solution does (and, for the non-correct ones, what is wrong with it)
    extension: str | None  # load_inline's name, for CUDA solutions


def model_new(problem: Problem, forward: list[str], doc: str) -> str:
    return MODEL_NEW.substitute(
        doc=doc,
        init_sig=init_signature(problem.init_params),
        init_body=init_body(problem.recipe.model_init()),
        forward=indent(forward, 8),
    )


def _options(rng: random.Random, plan: Planned, recipe: Recipe, fn: str) -> KernelOptions:
    blocks = [128, 256, 512] if plan.kind == "cuda" else [512, 1024, 2048]
    return KernelOptions(
        fn=fn,
        tag=plan.tag,
        block=rng.choice(blocks),
        fuse_mm=isinstance(recipe, Pipeline) and recipe.prologue == "linear" and rng.random() < 0.5,
        hang=plan.outcome == "hang",
    )


def render_solution(plan: Planned, rng: random.Random, compile_index: int) -> Rendered:
    problem = plan.problem
    recipe: Recipe = problem.recipe
    detail = ""
    if plan.outcome == "wrong":
        detail, recipe = rng.choice(recipe.mutations())
    header = Template(HEADER).substitute(tag=plan.tag, problem=problem.stem, kind=plan.kind)
    fn = f"{problem.name.lower()}_{plan.kind}"
    if plan.kind == "pytorch":
        text = TORCH_MODULE.substitute(header=header) + model_new(
            problem, recipe.torch_forward(), f"{problem.name} in plain PyTorch."
        )
        return Rendered(text, detail or "plain PyTorch, an equivalent formula", None)
    opt = _options(rng, plan, recipe, fn)
    how = f"block {opt.block}" + (", GEMM before the kernel, bias fused" if opt.fuse_mm else "")
    if plan.kind == "triton":
        kernel = recipe.triton(opt)
        text = TRITON_MODULE.substitute(header=header, code=kernel.code) + model_new(
            problem, kernel.forward, f"{problem.name} with a Triton kernel."
        )
        return Rendered(text, detail or f"Triton, {how}", None)
    cuda: CudaKernel = recipe.cuda(opt)
    source = cuda.source
    if plan.outcome == "compile_error":
        source, detail = break_source(source, compile_index)
    if plan.outcome == "hang":
        detail = "grid-wide barrier waits for gridDim.x + 1 arrivals: never released"
    ext_name = f"corpus_l{problem.level}_p{problem.number}_s{plan.sample}"
    text = CUDA_MODULE.substitute(
        header=header, source=source, decl=cuda.decl, ext_name=ext_name, function=cuda.function
    ) + model_new(problem, cuda.forward, f"{problem.name} with a custom CUDA kernel.")
    return Rendered(text, detail or f"CUDA, {how}", ext_name)
