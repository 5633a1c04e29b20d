"""The static scan: each flag fires on small cheating sources and stays quiet on honest ones."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kbench.scan import (
    FLAGS,
    SNIPPET_CHARS,
    STATIC_MONKEY_PATCH,
    STATIC_PRECISION,
    STATIC_SIDE_STREAM,
    STATIC_THREAD,
    STATIC_TORCH_FALLBACK,
    Finding,
    scan_source,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_SOLUTIONS = REPO / "kbench" / "solutions" / "example_scale_bias_relu6"


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def flagged_lines(source: str, flag: str) -> list[int]:
    return [f.line for f in scan_source(source) if f.flag == flag]


# --- sources that must be flagged -----------------------------------------------------------------------

FLAGGED: dict[str, tuple[str, str]] = {
    # static_side_stream
    "py_stream_object": (
        STATIC_SIDE_STREAM,
        """
        import torch
        side = torch.cuda.Stream()
        """,
    ),
    "py_stream_context": (
        STATIC_SIDE_STREAM,
        """
        import torch
        def forward(x, s):
            with torch.cuda.stream(s):
                return x + 1
        """,
    ),
    "py_set_stream_imported_by_name": (
        STATIC_SIDE_STREAM,
        """
        from torch.cuda import set_stream
        """,
    ),
    "py_external_stream_via_alias": (
        STATIC_SIDE_STREAM,
        """
        import torch as th
        s = th.cuda.ExternalStream(1234)
        """,
    ),
    "py_stream_via_getattr": (
        STATIC_SIDE_STREAM,
        """
        import torch
        s = getattr(torch.cuda, "Stream")()
        """,
    ),
    "cpp_stream_create": (
        STATIC_SIDE_STREAM,
        '''
        cuda_source = r"""
        cudaStream_t s;
        cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
        """
        ''',
    ),
    "cpp_stream_from_pool": (
        STATIC_SIDE_STREAM,
        '''
        cuda_source = """
        auto s = c10::cuda::getStreamFromPool();
        """
        ''',
    ),
    "cpp_host_func": (
        STATIC_SIDE_STREAM,
        """
        cuda_source = "cudaLaunchHostFunc(stream, callback, nullptr);"
        """,
    ),
    "cpp_name_split_over_literals": (
        STATIC_SIDE_STREAM,
        """
        cuda_source = ("cudaStream"
                       "Create(&s);")
        """,
    ),
    # static_thread
    "py_threading": (
        STATIC_THREAD,
        """
        import threading
        threading.Thread(target=print, daemon=True).start()
        """,
    ),
    "py_executor": (
        STATIC_THREAD,
        """
        from concurrent.futures import ThreadPoolExecutor
        """,
    ),
    "py_multiprocessing": (
        STATIC_THREAD,
        """
        import multiprocessing as mp
        """,
    ),
    "py_asyncio": (
        STATIC_THREAD,
        """
        import asyncio
        """,
    ),
    "py_low_level_thread": (
        STATIC_THREAD,
        """
        import _thread
        """,
    ),
    "py_fork": (
        STATIC_THREAD,
        """
        import os
        pid = os.fork()
        """,
    ),
    "py_subprocess": (
        STATIC_THREAD,
        """
        import subprocess
        subprocess.Popen(["sleep", "1"])
        """,
    ),
    "cpp_std_thread": (
        STATIC_THREAD,
        '''
        cpp_source = """
        void go() { std::thread worker(fill); worker.detach(); }
        """
        ''',
    ),
    "cpp_std_async": (
        STATIC_THREAD,
        '''
        cpp_source = """
        auto later = std::async(std::launch::async, fill);
        """
        ''',
    ),
    "cpp_pthread": (
        STATIC_THREAD,
        """
        cpp_source = "pthread_create(&tid, nullptr, fill, nullptr);"
        """,
    ),
    "cpp_jthread": (
        STATIC_THREAD,
        """
        cpp_source = "std::jthread worker(fill);"
        """,
    ),
    # static_monkey_patch
    "py_patch_allclose": (
        STATIC_MONKEY_PATCH,
        """
        import torch
        torch.allclose = lambda *a, **k: True
        """,
    ),
    "py_patch_event_timer": (
        STATIC_MONKEY_PATCH,
        """
        import torch
        torch.cuda.Event.elapsed_time = lambda self, end: 1e-6
        """,
    ),
    "py_patch_perf_counter": (
        STATIC_MONKEY_PATCH,
        """
        import time
        time.perf_counter = lambda: 0.0
        """,
    ),
    "py_patch_functional_alias": (
        STATIC_MONKEY_PATCH,
        """
        import torch.nn.functional as F
        F.gelu = lambda x: x
        """,
    ),
    "py_patch_tensor_dunder": (
        STATIC_MONKEY_PATCH,
        """
        from torch import Tensor
        Tensor.__eq__ = lambda a, b: True
        """,
    ),
    "py_setattr_module": (
        STATIC_MONKEY_PATCH,
        """
        import torch
        setattr(torch, "equal", lambda *a: True)
        """,
    ),
    "py_module_dict_update": (
        STATIC_MONKEY_PATCH,
        """
        import torch
        torch.__dict__.update(allclose=lambda *a, **k: True)
        """,
    ),
    "py_sys_modules_write": (
        STATIC_MONKEY_PATCH,
        """
        import sys
        sys.modules["torch.testing"] = object()
        """,
    ),
    "py_builtins": (
        STATIC_MONKEY_PATCH,
        """
        import builtins
        builtins.print = lambda *a: None
        """,
    ),
    "py_imports_harness": (
        STATIC_MONKEY_PATCH,
        """
        from kbench import timing
        """,
    ),
    "py_gc_objects": (
        STATIC_MONKEY_PATCH,
        """
        import gc
        found = [o for o in gc.get_objects() if type(o).__name__ == "Judgement"]
        """,
    ),
    "py_getframe": (
        STATIC_MONKEY_PATCH,
        """
        import sys
        caller = sys._getframe(1)
        """,
    ),
    "py_inspect_stack": (
        STATIC_MONKEY_PATCH,
        """
        import inspect
        frames = inspect.stack()
        """,
    ),
    "py_code_swap": (
        STATIC_MONKEY_PATCH,
        """
        def fast(): pass
        def slow(): pass
        slow.__code__ = fast.__code__
        """,
    ),
    "py_ctypes": (
        STATIC_MONKEY_PATCH,
        """
        import ctypes
        """,
    ),
    "py_reload": (
        STATIC_MONKEY_PATCH,
        """
        import importlib
        import torch
        importlib.reload(torch)
        """,
    ),
    "cpp_imports_python_module": (
        STATIC_MONKEY_PATCH,
        """
        cpp_source = 'auto t = py::module_::import("time");'
        """,
    ),
    # static_torch_fallback
    "py_except_calls_functional": (
        STATIC_TORCH_FALLBACK,
        """
        import torch.nn.functional as F
        def forward(self, x):
            try:
                return _ext.run(x)
            except Exception:
                return F.relu(x)
        """,
    ),
    "py_except_calls_torch": (
        STATIC_TORCH_FALLBACK,
        """
        import torch
        try:
            _ext = load_inline(name="x", cpp_sources=src)
        except RuntimeError:
            _ext = None
            out = torch.clamp(x, 0, 6)
        """,
    ),
    "py_except_calls_super_forward": (
        STATIC_TORCH_FALLBACK,
        """
        class ModelNew(Model):
            def forward(self, x):
                try:
                    return _ext.run(x)
                except Exception:
                    return super().forward(x)
        """,
    ),
    "py_except_builds_reference": (
        STATIC_TORCH_FALLBACK,
        """
        try:
            _ext = build()
        except Exception:
            impl = Model()
        """,
    ),
    "py_modelnew_is_model": (
        STATIC_TORCH_FALLBACK,
        """
        from problem import Model
        ModelNew = Model
        """,
    ),
    "py_modelnew_subclasses_model": (
        STATIC_TORCH_FALLBACK,
        """
        class ModelNew(Model):
            pass
        """,
    ),
    # static_precision
    "py_allow_tf32": (
        STATIC_PRECISION,
        """
        import torch
        torch.backends.cuda.matmul.allow_tf32 = True
        """,
    ),
    "py_cudnn_tf32": (
        STATIC_PRECISION,
        """
        import torch
        torch.backends.cudnn.allow_tf32 = True
        """,
    ),
    "py_matmul_precision": (
        STATIC_PRECISION,
        """
        import torch
        torch.set_float32_matmul_precision("medium")
        """,
    ),
    "py_half_method": (
        STATIC_PRECISION,
        """
        def forward(self, x):
            return self.linear(x.half()).float()
        """,
    ),
    "py_bfloat16_method": (
        STATIC_PRECISION,
        """
        def forward(self, x):
            return x.bfloat16()
        """,
    ),
    "py_to_half_dtype": (
        STATIC_PRECISION,
        """
        import torch
        def forward(self, x):
            return x.to(torch.float16)
        """,
    ),
    "py_dtype_keyword": (
        STATIC_PRECISION,
        """
        import torch
        buf = torch.empty(16, dtype=torch.bfloat16)
        """,
    ),
    "py_autocast": (
        STATIC_PRECISION,
        """
        import torch
        def forward(self, x):
            with torch.autocast("cuda"):
                return self.linear(x)
        """,
    ),
    "py_cuda_amp": (
        STATIC_PRECISION,
        """
        from torch.cuda.amp import autocast
        """,
    ),
    "cpp_half_types": (
        STATIC_PRECISION,
        '''
        cuda_source = """
        __global__ void k(const float* x, __half* y) { y[0] = __float2half(x[0]); }
        """
        ''',
    ),
    "cpp_bf16_type": (
        STATIC_PRECISION,
        """
        cuda_source = "__nv_bfloat16 v = __float2bfloat16(x);"
        """,
    ),
    "cpp_tf32_wmma": (
        STATIC_PRECISION,
        """
        cuda_source = "wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;"
        """,
    ),
    "cpp_tf32_ptx": (
        STATIC_PRECISION,
        """
        cuda_source = 'asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(out) : "f"(in));'
        """,
    ),
    "cpp_cublas_tf32": (
        STATIC_PRECISION,
        """
        cuda_source = "cublasSetMathMode(handle, CUBLAS_TF32_TENSOR_OP_MATH);"
        """,
    ),
    "cpp_tensor_dtype": (
        STATIC_PRECISION,
        """
        cuda_source = "auto h = x.to(torch::kBFloat16); auto g = y.to(at::kHalf);"
        """,
    ),
}


@pytest.mark.parametrize("name", sorted(FLAGGED))
def test_cheating_source_is_flagged(name: str):
    flag, text = FLAGGED[name]
    assert flagged_lines(src(text), flag), f"{name}: expected {flag}"


def test_every_flag_has_python_and_cpp_cases():
    for flag in FLAGS:
        cases = [name for name, (case_flag, _) in FLAGGED.items() if case_flag == flag]
        assert any(name.startswith("py_") for name in cases), flag
        if flag != STATIC_TORCH_FALLBACK:  # a fallback to PyTorch is Python by nature
            assert any(name.startswith("cpp_") for name in cases), flag


# --- honest sources that must not be flagged ------------------------------------------------------------

CLEAN: dict[str, tuple[str, str]] = {
    "py_current_stream_and_sync": (
        STATIC_SIDE_STREAM,
        """
        import torch
        stream = torch.cuda.current_stream()
        torch.cuda.synchronize()
        torch.cuda.current_stream().synchronize()
        """,
    ),
    "cpp_current_stream": (
        STATIC_SIDE_STREAM,
        '''
        cuda_source = r"""
        #include <c10/cuda/CUDAStream.h>
        void run() {
            auto s1 = c10::cuda::getCurrentCUDAStream();
            auto s2 = at::cuda::getCurrentCUDAStream();
            cudaStream_t raw = s1.stream();
            kernel<<<blocks, threads, 0, raw>>>();
        }
        """
        ''',
    ),
    "cpp_commented_out_stream": (
        STATIC_SIDE_STREAM,
        '''
        cuda_source = r"""
        // cudaStreamCreate(&s);  left over from an experiment
        /* getStreamFromPool() was slower */
        """
        # torch.cuda.Stream() is not used any more
        ''',
    ),
    "cpp_parallel_for_and_omp": (
        STATIC_THREAD,
        '''
        cpp_source = r"""
        #include <ATen/Parallel.h>
        void run(int64_t n) {
            at::parallel_for(0, n, 16, [&](int64_t b, int64_t e) { work(b, e); });
            #pragma omp parallel for
            for (int64_t i = 0; i < n; ++i) work(i, i + 1);
            int cores = std::thread::hardware_concurrency();
        }
        """
        ''',
    ),
    "py_plain_module": (
        STATIC_THREAD,
        """
        import os
        import torch
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
        n = os.cpu_count()
        """,
    ),
    "py_self_and_local_attributes": (
        STATIC_MONKEY_PATCH,
        """
        import torch
        import torch.nn as nn

        class ModelNew(nn.Module):
            def __init__(self, features):
                super().__init__()
                self.weight = nn.Parameter(torch.randn(features))
                self.cache = {}
                self.cache["k"] = 1
                setattr(self, "bias", nn.Parameter(torch.zeros(features)))

            def forward(self, x):
                out = torch.empty_like(x)
                out.requires_grad = False
                return out

        class Holder:
            pass

        holder = Holder()
        holder.value = 3
        holder.__setattr__("value", 4)
        torch.backends.cudnn.benchmark = True
        """,
    ),
    "py_load_inline_name_mentions_prefix": (
        STATIC_MONKEY_PATCH,
        """
        KBENCH_DEVICES = ["cpu"]
        _ext = load_inline(name="kbench_example_ext", cpp_sources="")
        """,
    ),
    "py_except_only_reraises": (
        STATIC_TORCH_FALLBACK,
        """
        import torch
        try:
            _ext = load_inline(name="x", cpp_sources=src)
        except Exception as exc:
            torch.cuda.synchronize()
            raise RuntimeError(f"build failed for {torch.typename(x)}: {exc}") from exc
        """,
    ),
    "py_torch_outside_handlers": (
        STATIC_TORCH_FALLBACK,
        """
        import torch
        import torch.nn as nn

        class ModelNew(nn.Module):
            def forward(self, x):
                try:
                    out = _ext.run(x)
                finally:
                    torch.cuda.synchronize()
                return torch.relu(out)
        """,
    ),
    "py_float32_code": (
        STATIC_PRECISION,
        """
        import torch
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        def forward(self, x):
            half = x.shape[-1] // 2
            return x.to(torch.float32)[..., :half].float()
        """,
    ),
    "cpp_float32_code": (
        STATIC_PRECISION,
        '''
        cuda_source = r"""
        __global__ void k(const float* x, float* y, int n) {
            int half = n / 2;
            float4 v = reinterpret_cast<const float4*>(x)[threadIdx.x];
            y[threadIdx.x] = v.x + v.y;  // __half would lose precision here
        }
        void check(torch::Tensor x) { TORCH_CHECK(x.scalar_type() == torch::kFloat32); }
        """
        ''',
    ),
}


@pytest.mark.parametrize("name", sorted(CLEAN))
def test_honest_source_is_not_flagged(name: str):
    flag, text = CLEAN[name]
    assert flagged_lines(src(text), flag) == [], name
    assert scan_source(src(text)) == [], f"{name}: no other flag either"


@pytest.mark.parametrize("name", ["cpp_fused.py", "cuda_fused.py"])
def test_registered_example_solutions_have_no_findings(name: str):
    assert scan_source((EXAMPLE_SOLUTIONS / name).read_text()) == []


# --- line numbers, snippets, de-duplication, robustness -------------------------------------------------


def test_line_number_inside_triple_quoted_cuda_string():
    source = src(
        '''
        import torch

        cuda_source = r"""
        #include <cuda_runtime.h>

        void launch() {
            cudaStream_t s;
            cudaStreamCreate(&s);
        }
        """
        '''
    )
    (finding,) = scan_source(source)
    assert finding == Finding(STATIC_SIDE_STREAM, 8, "cudaStreamCreate(&s);", finding.why)
    assert source.splitlines()[finding.line - 1].strip() == "cudaStreamCreate(&s);"


def test_line_numbers_of_python_findings():
    source = src(
        """
        import torch


        torch.allclose = lambda *a, **k: True

        class ModelNew(torch.nn.Module):
            def forward(self, x):
                return x.half()
        """
    )
    assert flagged_lines(source, STATIC_MONKEY_PATCH) == [4]
    assert flagged_lines(source, STATIC_PRECISION) == [8]


def test_line_number_after_a_single_line_string_with_escaped_newlines():
    source = 'x = 1\ncpp_source = "int a;\\nint b;\\nstd::thread t(f);\\n"\ny = 2\n'
    assert flagged_lines(source, STATIC_THREAD) == [2]


def test_line_number_of_a_name_hidden_by_an_escape():
    # The file's text never spells the name; the decoded value does, two lines into the literal.
    source = 'import torch\ncuda_source = """\nint a;\n\\x63udaStreamCreate(&s);\n"""\n'
    assert "cudaStreamCreate" not in source
    assert flagged_lines(source, STATIC_SIDE_STREAM) == [4]


def test_one_finding_per_flag_and_line():
    source = 'cuda_source = "cudaStreamCreate(&a); cudaStreamCreate(&b); getStreamFromPool();"\n'
    assert [(f.flag, f.line) for f in scan_source(source)] == [(STATIC_SIDE_STREAM, 1)]


def test_findings_are_well_formed():
    long_line = "torch.allclose = lambda *args, **kwargs: True  " + "# " + "x" * 200
    source = "import torch\n    \n" + long_line + "\nimport threading\n"
    findings = scan_source(source)
    assert {f.flag for f in findings} == {STATIC_MONKEY_PATCH, STATIC_THREAD}
    for finding in findings:
        assert finding.flag in FLAGS
        assert len(finding.snippet) <= SNIPPET_CHARS
        assert finding.snippet == finding.snippet.strip()
        assert finding.why.endswith(".")


def test_syntax_error_file_is_scanned_as_text():
    source = src(
        """
        import torch

        class ModelNew(torch.nn.Module)
            pass

        cudaStreamCreate(&stream);
        // cudaStreamCreateWithFlags(&other, 0); commented out
        """
    )
    findings = scan_source(source)
    assert [(f.flag, f.line) for f in findings] == [(STATIC_SIDE_STREAM, 6)]


def test_unterminated_string_does_not_raise():
    source = 'import torch\ncuda_source = """\nstd::thread t(f);\n'
    assert flagged_lines(source, STATIC_THREAD) == [3]


@pytest.mark.parametrize("source", ["", "\n\n", "\x00", "def (", "(" * 5000, "'''", "\r\nimport threading\r\n"])
def test_odd_input_never_raises(source: str):
    assert isinstance(scan_source(source), list)


def test_windows_line_endings_keep_line_numbers():
    source = "import torch\r\n\r\ntorch.cuda.set_stream(s)\r\n"
    assert flagged_lines(source, STATIC_SIDE_STREAM) == [3]
