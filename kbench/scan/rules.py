"""The rule tables: what the text pass searches for, and which resolved names the AST pass flags."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from kbench.scan.findings import STATIC_MONKEY_PATCH, STATIC_PRECISION, STATIC_SIDE_STREAM, STATIC_THREAD


@dataclass(frozen=True)
class TextRule:
    """A pattern searched for line by line in the comment-free text (C++/CUDA, or Python when unparseable)."""

    flag: str
    pattern: re.Pattern[str]
    why: str


@dataclass(frozen=True)
class NameRule:
    """A dotted name (after resolving imports) whose mere use is worth a look."""

    flag: str
    names: frozenset[str]
    why: str

    def matches(self, name: str) -> bool:
        # "threading" covers "threading.Thread" but "torch.cuda.stream" must not cover "torch.cuda.streams".
        return any(name == n or name.startswith(n + ".") for n in self.names)


def _text(flag: str, pattern: str, why: str) -> TextRule:
    return TextRule(flag, re.compile(pattern), why)


def _names(flag: str, names: Iterable[str], why: str) -> NameRule:
    return NameRule(flag, frozenset(names), why)


# Case-sensitive on purpose: `KBENCH_DEVICES` is the harness's own solution setting, not a reference to it.
TEXT_RULES: tuple[TextRule, ...] = (
    _text(
        STATIC_SIDE_STREAM,
        r"\bcudaStreamCreate(?:WithFlags|WithPriority)?\b|\bcuStreamCreate\w*",
        "Creates a CUDA stream of its own, so work can run outside the stream being timed.",
    ),
    _text(
        STATIC_SIDE_STREAM,
        r"\bgetStreamFromPool\b|\bgetStreamFromExternal\b",
        "Takes a stream other than PyTorch's current one, so work can run outside the stream being timed.",
    ),
    _text(
        STATIC_SIDE_STREAM,
        r"\bsetCurrentCUDAStream\b|\bCUDA(?:Multi)?StreamGuard\b",
        "Switches PyTorch's current stream, so work can run outside the stream being timed.",
    ),
    _text(
        STATIC_SIDE_STREAM,
        r"\bcudaStreamPerThread\b|default-stream[= ]per-thread",
        "Uses the per-thread default stream rather than PyTorch's current stream.",
    ),
    _text(
        STATIC_SIDE_STREAM,
        r"\b(?:cudaLaunchHostFunc|cuLaunchHostFunc|cudaStreamAddCallback)\b",
        "Queues host code on a stream, which runs outside the timed kernels.",
    ),
    _text(
        STATIC_THREAD,
        r"\bstd::j?thread\b(?!\s*::\s*hardware_concurrency)|\bpthread_create\b",
        "Starts a thread that can keep working after the call returns.",
    ),
    _text(
        STATIC_THREAD,
        r"\bstd::async\b|\bstd::launch::async\b|\bat::(?:launch|intraop_launch(?:_future)?)\b",
        "Runs work asynchronously on another thread that is not joined before returning.",
    ),
    _text(STATIC_THREAD, r"\b(?:v?fork|posix_spawnp?)\s*\(", "Starts another process."),
    _text(STATIC_MONKEY_PATCH, r"\bkbench\b", "Refers to the harness, which a solution has no reason to touch."),
    _text(
        STATIC_MONKEY_PATCH,
        r"\b(?:dlsym|dlopen|mprotect)\s*\(|\bRTLD_NEXT\b|\bLD_PRELOAD\b|/proc/self/mem",
        "Loads or patches native code at runtime, which can replace library functions.",
    ),
    _text(
        STATIC_MONKEY_PATCH,
        r"\bPy(?:Import_Import\w*|Run_\w+|Object_SetAttr\w*)\b|\b(?:py|pybind11)::module_?::import\b",
        "Reaches into Python objects from native code, out of sight of the Python-level checks.",
    ),
    _text(
        STATIC_PRECISION,
        r"\b(?:__half2?|half2|__nv_bfloat162?)\b",
        "Computes in a 16-bit floating-point type.",
    ),
    _text(
        STATIC_PRECISION,
        r"\b__(?:float2(?:half|bfloat16)|half2float|bfloat162float)\w*",
        "Converts between fp32 and a 16-bit floating-point type.",
    ),
    _text(
        STATIC_PRECISION,
        r"\bwmma::precision::tf32\b|\b__float_to_tf32\b|\bcvt\.rna\.tf32\b|\bmma\.sync\.[\w.]*\.(?:f16|bf16|tf32)\b",
        "Rounds operands to TF32 or 16-bit for tensor-core math.",
    ),
    _text(
        STATIC_PRECISION,
        r"\bCUBLAS_TF32_TENSOR_OP_MATH\b|\bCUBLAS_COMPUTE_32F_FAST_\w+|\bCUBLAS_COMPUTE_16F\b|\bCUDA_R_16B?F\b",
        "Lets cuBLAS compute at reduced precision.",
    ),
    _text(
        STATIC_PRECISION,
        r"\b(?:at|torch|c10)::(?:k(?:Half|BFloat16|Float16)|ScalarType::(?:Half|BFloat16)|Half|BFloat16)\b",
        "Uses a 16-bit tensor type.",
    ),
)

# Only for files that do not parse, where the AST pass cannot run: the most telling Python spellings.
PYTHON_TEXT_RULES: tuple[TextRule, ...] = (
    _text(
        STATIC_SIDE_STREAM,
        r"\btorch\.cuda\.(?:Stream|stream|set_stream|ExternalStream)\b",
        "Uses a stream other than PyTorch's current one.",
    ),
    _text(
        STATIC_THREAD,
        r"^\s*(?:import|from)\s+(?:threading|_thread|multiprocessing|asyncio|subprocess|concurrent)\b",
        "Imports a thread or process module.",
    ),
    _text(
        STATIC_MONKEY_PATCH,
        r"^\s*(?:import|from)\s+(?:ctypes|builtins)\b|\bsys\.(?:modules|_getframe)\b|\bgc\.get_objects\b",
        "Reaches into the interpreter or native code.",
    ),
    _text(
        STATIC_PRECISION,
        r"\ballow_tf32\s*=\s*True\b|\.(?:half|bfloat16)\(\s*\)|\btorch\.(?:float16|half|bfloat16)\b|\bautocast\b",
        "Lowers precision.",
    ),
)

_SPAWN = ("spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe")

NAME_RULES: tuple[NameRule, ...] = (
    _names(
        STATIC_SIDE_STREAM,
        ["torch.cuda.Stream", "torch.cuda.ExternalStream", "torch.cuda.streams", "torch.Stream"],
        "Makes a stream other than PyTorch's current one, so work can run outside the stream being timed.",
    ),
    _names(
        STATIC_SIDE_STREAM,
        [
            "torch.cuda.stream",
            "torch.cuda.StreamContext",
            "torch.cuda.set_stream",
            "torch.cuda._set_stream_by_id",
            "torch.accelerator.set_stream",
        ],
        "Switches the current stream, so work can run outside the stream being timed.",
    ),
    _names(
        STATIC_THREAD,
        ["threading", "_thread", "concurrent.futures", "multiprocessing", "torch.multiprocessing", "asyncio"],
        "Runs work on another thread or process that can outlive the call.",
    ),
    _names(
        STATIC_THREAD,
        ["subprocess", "os.fork", "os.forkpty", "os.posix_spawn", "os.posix_spawnp", "os.system", "os.popen"]
        + [f"os.{name}" for name in _SPAWN],
        "Starts another process.",
    ),
    _names(STATIC_MONKEY_PATCH, ["kbench"], "Refers to the harness, which a solution has no reason to touch."),
    _names(STATIC_MONKEY_PATCH, ["builtins", "__builtins__"], "Reaches Python's builtins, which the harness uses too."),
    _names(STATIC_MONKEY_PATCH, ["sys.modules"], "Reaches loaded modules by name, the harness's included."),
    _names(
        STATIC_MONKEY_PATCH,
        ["gc.get_objects", "gc.get_referrers", "gc.get_referents"],
        "Searches live objects, where the harness's own objects can be found.",
    ),
    _names(
        STATIC_MONKEY_PATCH,
        [
            "sys._getframe",
            "sys._current_frames",
            "inspect.stack",
            "inspect.currentframe",
            "inspect.getouterframes",
            "inspect.trace",
        ],
        "Walks the call stack into its caller, which is the harness.",
    ),
    _names(
        STATIC_MONKEY_PATCH,
        ["sys.settrace", "sys.setprofile", "atexit"],
        "Installs a hook that runs inside or after the harness's own code.",
    ),
    _names(
        STATIC_MONKEY_PATCH,
        ["ctypes", "_ctypes", "cffi"],
        "Calls native code directly, out of sight of the Python-level checks.",
    ),
    _names(STATIC_MONKEY_PATCH, ["importlib.reload", "imp.reload"], "Reloads a module, replacing its functions."),
    _names(
        STATIC_MONKEY_PATCH,
        ["torch.overrides.TorchFunctionMode", "torch.utils._python_dispatch"],
        "Intercepts every torch call in the process, the harness's included.",
    ),
    _names(
        STATIC_MONKEY_PATCH,
        ["exec", "eval", "compile"],
        "Runs code built at runtime, which this scan cannot see.",
    ),
    _names(
        STATIC_PRECISION,
        ["torch.autocast", "torch.amp", "torch.cuda.amp", "torch.cpu.amp"],
        "Runs under autocast, which computes in 16-bit.",
    ),
    _names(
        STATIC_PRECISION,
        ["torch.HalfTensor", "torch.BFloat16Tensor", "torch.cuda.HalfTensor", "torch.cuda.BFloat16Tensor"],
        "Uses a 16-bit tensor type.",
    ),
)

DYNAMIC_IMPORTS = frozenset({"__import__", "importlib.import_module"})
SETATTR_CALLS = frozenset({"setattr", "delattr", "object.__setattr__", "object.__delattr__"})
# Rebinding these changes what a function or object *is*, whoever owns it.
REBINDING_ATTRS = frozenset({"__code__", "__class__", "__defaults__", "__kwdefaults__", "__dict__", "__bases__"})
# Reading these is how code escapes from its own scope into the caller's (the harness's) namespace.
ESCAPE_ATTRS = frozenset({"__globals__", "__subclasses__", "__builtins__", "f_back", "f_globals", "f_locals"})
MUTATING_DUNDERS = frozenset({"__setattr__", "__delattr__", "__setitem__", "__delitem__"})
DICT_MUTATORS = frozenset({"update", "setdefault", "pop", "popitem", "clear"})
# Framework switches that are settings, not patches; precision ones are judged by the precision rules.
SETTING_PREFIXES = ("torch.backends.", "torch._dynamo.config.", "torch._inductor.config.")
TF32_SWITCHES = frozenset(
    {
        "torch.backends.cuda.matmul.allow_tf32",
        "torch.backends.cudnn.allow_tf32",
        "torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction",
        "torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction",
    }
)
LOW_DTYPES = frozenset({"torch.float16", "torch.half", "torch.bfloat16"})
LOW_DTYPE_PREFIXES = ("torch.float8_", "torch.float4_")
COMPUTE_PREFIXES = ("torch.", "F.", "nn.functional.", "torch.nn.functional.")
# Calls under torch that are bookkeeping, not a second implementation: an OOM handler that empties the
# cache, or a retry of the build with other flags, is not a fallback.
NON_COMPUTE_PREFIXES = ("torch.cuda.", "torch.backends.", "torch.utils.cpp_extension.", "torch.is_", "torch.get_")
