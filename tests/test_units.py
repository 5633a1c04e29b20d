"""Fast tests of the trusted-side pieces: config, catalog, comparison, gate, results file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PROBLEMS, SOLUTIONS

from kbench import catalog
from kbench.compare import compare_records, compare_tensor
from kbench.config import ConfigError, KbenchConfig, Tolerance, load_config
from kbench.gate import GateConfig, evaluate, load_gate
from kbench.report import results_frame
from kbench.results import JobResult, ResultsFile, Verdict

REPO = Path(__file__).resolve().parents[1]


def tol(_: str) -> Tolerance:
    return KbenchConfig().tolerance_for(_)


# --- config ---------------------------------------------------------------------------------------------


def test_default_yaml_spells_out_the_embedded_defaults():
    assert load_config(REPO / "configs" / "default.yaml") == KbenchConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("trails: 3\n", "unknown key 'trails'"),
        ("timing: {repeats: many}\n", "key 'timing.repeats'"),
        ("timeouts: {build_s: -1}\n", "key 'timeouts.build_s'"),
        ("tolerances: {fp8: {atol: 1, rtol: 1}}\n", "tolerances.fp8"),
        ("trials: [1\n", "not valid YAML"),
    ],
)
def test_config_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_overriding_one_tolerance_keeps_the_others(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("tolerances: {float32: {atol: 1.0e-3, rtol: 0.0}}\n")
    config = load_config(path)
    assert config.tolerance_for("float32") == Tolerance(atol=1e-3, rtol=0.0)
    assert config.tolerance_for("bfloat16") == Tolerance(atol=1e-2, rtol=1e-2)
    assert config.tolerance_for("int64") == Tolerance(atol=0.0, rtol=0.0)


# --- catalog --------------------------------------------------------------------------------------------


def test_problem_constants_and_small_sizes_are_read_without_running_the_file():
    problem = catalog.Catalog().resolve_problem("example_scale_bias_relu6")
    assert problem.constants["batch_size"] == 4096
    assert problem.small_sizes == {"batch_size": 512, "features": 1024}


def test_small_sizes_must_name_real_constants(tmp_path: Path):
    bad = tmp_path / "typo.py"
    bad.write_text((PROBLEMS / "affine_relu.py").read_text() + "\nKBENCH_SMALL_SIZES = {'batchsize': 2}\n")
    with pytest.raises(catalog.CatalogError, match="KBENCH_SMALL_SIZES names batchsize"):
        catalog.read_problem(bad)


def test_unknown_problem_suggests_close_names():
    with pytest.raises(catalog.CatalogError, match="Did you mean: example_scale_bias_relu6"):
        catalog.Catalog().resolve_problem("example_scale_bias_relu")


def test_a_file_without_model_is_not_a_problem():
    with pytest.raises(catalog.CatalogError, match="missing Model"):
        catalog.read_problem(SOLUTIONS / "affine_relu" / "correct_torch.py")


def test_solution_devices_are_declared_or_inferred():
    solutions = {
        s.name: s.devices
        for s in catalog.Catalog().registered_solutions(catalog.Catalog().resolve_problem("example_scale_bias_relu6"))
    }
    assert solutions == {"cpp_fused": ("cpu",), "cuda_fused": ("cuda",)}
    assert catalog.read_solution(SOLUTIONS / "affine_relu" / "correct_torch.py").devices == ("cpu", "cuda")


@pytest.mark.parametrize(
    ("text", "value"), [("batch_size=8", 8), ("eps=1e-3", 1e-3), ("shape=(3, 4)", (3, 4)), ("mode=fast", "fast")]
)
def test_set_values_are_python_literals(text: str, value: object):
    assert catalog.parse_override(text)[1] == value


def test_set_of_an_unknown_constant_is_refused():
    problem = catalog.read_problem(PROBLEMS / "affine_relu.py")
    catalog.check_overrides(problem, {"batch_size": 2})
    with pytest.raises(catalog.CatalogError, match="no module-level constant batchsize"):
        catalog.check_overrides(problem, {"batchsize": 2})


# --- comparison -----------------------------------------------------------------------------------------


def record(*tensors: torch.Tensor) -> dict:
    return {"structure": "tensor" if len(tensors) == 1 else "sequence", "tensors": list(tensors)}


def test_comparison_passes_within_tolerance_and_reports_errors():
    ref = torch.rand(100) + 1.0
    result = compare_tensor(ref + 5e-5, ref, tol)
    assert result.ok
    assert result.max_abs_error == pytest.approx(5e-5, rel=1e-2)
    assert 0 < result.max_rel_error <= 5e-5


def test_comparison_fails_outside_tolerance():
    ref = torch.rand(100) + 1.0
    result = compare_tensor(ref + 1e-2, ref, tol)
    assert not result.ok and "100 of 100 elements outside" in result.reason


def test_nan_and_inf_must_sit_where_the_reference_has_them():
    ref = torch.tensor([1.0, float("nan"), float("inf")])
    assert compare_tensor(ref.clone(), ref, tol).ok
    assert not compare_tensor(torch.tensor([1.0, 2.0, float("inf")]), ref, tol).ok
    assert not compare_tensor(torch.tensor([1.0, float("nan"), -float("inf")]), ref, tol).ok


def test_dtype_shape_and_integer_outputs_are_exact():
    ref = torch.arange(6).reshape(2, 3)
    assert compare_tensor(ref.clone(), ref, tol).ok
    assert not compare_tensor(ref + 1, ref, tol).ok
    assert "dtype" in compare_tensor(ref.float(), ref, tol).reason
    assert "shape" in compare_tensor(ref.reshape(3, 2), ref, tol).reason


def test_output_structure_and_count_must_match():
    a, b = torch.rand(3), torch.rand(2)
    assert compare_records(record(a, b), record(a, b), tol).ok
    assert not compare_records(record(a), record(a, b), tol).ok
    assert compare_records({"not_tensor": "LazyResult", "tensors": []}, record(a), tol).not_tensor


# --- gate -----------------------------------------------------------------------------------------------


def job(problem: str, solution: str, verdict: Verdict, speedup: float | None) -> JobResult:
    return JobResult(problem=problem, solution=solution, verdict=verdict, reason="", device="cpu", speedup=speedup)


def test_gate_passes_only_correct_problems_at_their_threshold():
    gate = GateConfig.model_validate({"default_min_speedup": 1.0, "problems": {"a": {"min_speedup": 2.0}}})
    results = [
        job("a", "fast", Verdict.CORRECT, 2.5),
        job("a", "naive", Verdict.CORRECT, 0.5),
        job("b", "x", Verdict.CORRECT, 1.2),
    ]
    assert all(c.passed for c in evaluate(results, gate))
    slower = [job("a", "fast", Verdict.CORRECT, 1.5), results[2]]
    assert [c.passed for c in evaluate(slower, gate)] == [False, True]


def test_gate_fails_on_any_wrong_solution_or_a_missing_problem():
    gate = GateConfig.model_validate({"default_min_speedup": 0.0, "problems": {"c": {}}})
    results = [job("a", "fast", Verdict.CORRECT, 3.0), job("a", "bad", Verdict.INCORRECT, None)]
    checks = {c.problem: c for c in evaluate(results, gate)}
    assert not checks["a"].passed and "bad: incorrect" in checks["a"].reason
    assert not checks["c"].passed and checks["c"].reason == "not in this run"


def test_gate_file_typos_are_errors(tmp_path: Path):
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump({"default_min_speedup": 1.0, "problem": {}}))
    with pytest.raises(ConfigError, match="unknown key 'problem'"):
        load_gate(path)
    assert load_gate(REPO / "configs" / "ci.yaml").default_min_speedup == 0.0


# --- results file ---------------------------------------------------------------------------------------


def test_results_file_keeps_complete_lines_when_the_last_is_torn(tmp_path: Path):
    store = ResultsFile(tmp_path / "results.jsonl")
    store.append(job("a", "x", Verdict.CORRECT, 2.0))
    store.append(job("b", "y", Verdict.INCORRECT, None))
    with store.path.open("a") as fh:
        fh.write('{"problem": "c", "solut')
    assert [(r.problem, r.verdict) for r in store.read()] == [("a", Verdict.CORRECT), ("b", Verdict.INCORRECT)]


def test_non_finite_numbers_are_recorded_as_unknown(tmp_path: Path):
    store = ResultsFile(tmp_path / "results.jsonl")
    result = job("a", "x", Verdict.INCORRECT, None)
    result.max_abs_error = float("inf")
    store.append(result)
    assert json.loads(store.path.read_text())["max_abs_error"] is None


def test_the_report_carries_what_the_device_did_during_each_job():
    throttled = job("a", "x", Verdict.CORRECT, 2.0)
    throttled.device_state = {"sm_clock_mhz_busy_mean": 1755.5, "throttle": ["power cap", "thermal (software)"]}
    throttled.warnings = ["GPU slowed during the job (power cap)", "other processes used the GPU"]
    frame = results_frame([throttled, job("b", "y", Verdict.CORRECT, 1.0)])
    assert frame.loc[0, "sm_clock_mhz_busy_mean"] == 1755.5
    assert frame.loc[0, "gpu_throttle"] == "power cap;thermal (software)"
    assert frame.loc[0, "warnings"] == "GPU slowed during the job (power cap); other processes used the GPU"
    assert frame.loc[1, "gpu_throttle"] == frame.loc[1, "warnings"] == ""  # a CPU job: nothing seen, nothing said


def test_source_digest_changes_with_any_python_file(tmp_path: Path):
    from kbench.metadata import source_digest

    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    before = source_digest(tmp_path)
    assert source_digest(tmp_path) == before
    (tmp_path / "sub" / "b.py").write_text("y = 3\n")
    assert source_digest(tmp_path) != before


# --- worker environment ---------------------------------------------------------------------------------


def test_workers_keep_bytecode_in_kbench_cache_when_the_install_cannot(tmp_path, monkeypatch):
    import subprocess
    import sys

    from kbench import caches, solution_starts

    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setattr(caches, "installed_without_bytecode", lambda: True)
    env = solution_starts.worker_env(tmp_path)
    assert env["PYTHONPYCACHEPREFIX"] == str(tmp_path / "pycache") and "PYTHONDONTWRITEBYTECODE" not in env
    subprocess.run([sys.executable, "-c", "import kbench.stats"], env=env, check=True)
    assert list((tmp_path / "pycache").rglob("stats*.pyc")), "the worker's bytecode was not kept"

    monkeypatch.setattr(caches, "installed_without_bytecode", lambda: False)
    assert "PYTHONPYCACHEPREFIX" not in solution_starts.worker_env(tmp_path)  # an ordinary install: left alone
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", "/elsewhere")
    monkeypatch.setattr(caches, "installed_without_bytecode", lambda: True)
    assert solution_starts.worker_env(tmp_path)["PYTHONPYCACHEPREFIX"] == "/elsewhere"  # the user's choice wins


def test_workers_compile_inductor_kernels_in_their_own_process(tmp_path, monkeypatch):
    """Inductor's pool of compile processes goes on starting up and idling after a solution's first compiled
    call, into the reference's turns, where its CPU counts as the solution's background work. Workers compile in
    their own process whatever the user's shell says (8 here, as a many-core host would decide by itself)."""
    import subprocess
    import sys

    from kbench import solution_starts

    probe = (
        "from torch._inductor.async_compile import AsyncCompile, get_compile_threads; "
        "threads = get_compile_threads(); print(threads, AsyncCompile.use_process_pool() if threads == 1 else 'pool')"
    )
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "8")
    outside = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert outside.stdout.split() == ["8", "pool"], outside.stderr[-2000:]
    for device in ("cuda", "cpu"):
        env = solution_starts.worker_env(tmp_path, device)
        inside = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        assert inside.stdout.split() == ["1", "False"], (device, inside.stdout, inside.stderr[-2000:])


def test_the_command_line_keeps_its_bytecode_in_kbench_cache_when_the_install_cannot(tmp_path):
    """The console script settles the bytecode location before it imports torch; the check for bytecode
    beside torch's sources still looks there, not under the prefix this process now uses."""
    import subprocess
    import sys

    script = """
import sys
from kbench import caches
real = caches.installed_without_bytecode
before = real()
caches.installed_without_bytecode = lambda: True  # as on a machine whose torch has no bytecode
caches.keep_bytecode_here()
import kbench.stats
print(sys.pycache_prefix, real() == before)
"""
    env = {**os.environ, "KBENCH_CACHE_DIR": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPYCACHEPREFIX", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True).stdout
    prefix, unchanged = out.split()
    assert prefix == str(tmp_path / "pycache") and unchanged == "True", out
    assert list((tmp_path / "pycache").rglob("stats*.pyc")), "the command line's bytecode was not kept"


def test_a_reference_bound_by_openmp_is_held_to_its_priority_and_policy_only(monkeypatch: pytest.MonkeyPatch):
    from kbench.scheduling import Scheduling, openmp_binds_threads

    started = Scheduling(frozenset({0, 1}), 0, os.SCHED_OTHER)
    pinned = Scheduling(frozenset({0}), 0, os.SCHED_OTHER)
    assert started.changes(pinned) == ["CPU affinity {0,1} -> {0}"]
    assert started.changes(pinned, affinity=False) == []
    idle = Scheduling(frozenset({0, 1}), 19, os.SCHED_IDLE)
    assert started.changes(idle, affinity=False) == ["nice 0 -> 19", "policy SCHED_OTHER -> SCHED_IDLE"]
    for name in ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY", "KMP_AFFINITY"):
        monkeypatch.delenv(name, raising=False)
    assert not openmp_binds_threads()
    monkeypatch.setenv("OMP_PROC_BIND", "false")
    assert not openmp_binds_threads()
    monkeypatch.setenv("OMP_PROC_BIND", "close")
    assert openmp_binds_threads()
    assert Scheduling.of(os.getpid()) is not None
