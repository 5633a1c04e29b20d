"""The build pool (issue #18): solutions are built on CPU workers, N at a time, before any job runs; a compile error
is judged there and its job starts no worker; an unchanged solution is a cache hit."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import pytest
from conftest import PROBLEMS, SOLUTIONS, fast_config

from kbench import build_pool, session, throughput
from kbench.catalog import read_problem, read_solution
from kbench.config import Timeouts
from kbench.results import JobResult, Verdict
from kbench.runner import Job
from kbench.solution_starts import SolutionStarter

# affine_relu's ModelNew with its ReLU in C++: each tag is a distinct source, so each builds in its own folder.
GOOD = """
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

_ext = load_inline(
    name="kbench_pool_{tag}",
    cpp_sources="torch::Tensor relu_{tag}(torch::Tensor x) {{ return x.clamp_min(0); }}",
    functions=["relu_{tag}"],
)


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return _ext.relu_{tag}(self.linear(x))
"""


def _corpus(folder: Path) -> list[Path]:
    folder.mkdir()
    paths = []
    for tag in ("alpha", "beta"):
        paths.append(folder / f"cpp_{tag}.py")
        paths[-1].write_text(GOOD.format(tag=tag))
    paths.append(folder / "cpp_compile_error.py")
    paths[-1].write_text((SOLUTIONS / "affine_relu" / "cpp_compile_error.py").read_text())
    return paths


def _execute(paths: list[Path], monkeypatch: pytest.MonkeyPatch) -> tuple[list[JobResult], list[str], list[Any]]:
    """Run the corpus as a session with two build workers; the solutions whose workers started, and the pool's
    reports."""
    started: list[str] = []
    reports: list[build_pool.BuildReport] = []
    start_fresh, report = SolutionStarter.start_fresh, build_pool.Builds.report

    def counting_start(self, job, poison_numel):
        started.append(job.solution.name)
        return start_fresh(self, job, poison_numel)

    def keeping_report(self):
        reports.append(report(self))
        return reports[-1]

    monkeypatch.setattr(SolutionStarter, "start_fresh", counting_start)
    monkeypatch.setattr(build_pool.Builds, "report", keeping_report)
    problem = read_problem(PROBLEMS / "affine_relu.py")
    plan = session.SessionPlan([Job(problem, read_solution(path), {}) for path in paths])
    outcome = session.execute(plan, fast_config(), "cpu", build_jobs=2)
    return outcome.results, started, reports


@pytest.mark.slow
def test_a_corpus_builds_in_parallel_then_hits_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KBENCH_CACHE_DIR", str(tmp_path / "cache"))
    paths = _corpus(tmp_path / "solutions")

    results, started, (report,) = _execute(paths, monkeypatch)
    by_name = {r.solution: r for r in results}
    assert by_name["cpp_compile_error"].verdict == Verdict.COMPILE_ERROR
    assert "this_method_does_not_exist" in by_name["cpp_compile_error"].detail
    assert "cpp_compile_error" not in started  # judged by the pool: no worker, no reference partner
    for name in ("cpp_alpha", "cpp_beta"):
        assert by_name[name].verdict == Verdict.CORRECT, by_name[name].reason
        assert by_name[name].build_cache_hit  # the pool built it where the job's worker looks
    assert report.counts() == {"built": 2, "compile_error": 1}
    steps = report.steps_s()  # from ninja's log: two C++ compiles and two links (the failed one too, up to its error)
    assert steps["c++"] > 0 and steps["link"] > 0 and "cuda" not in steps
    builds = sorted((o.began, o.began + o.worker_s) for o in report.outcomes.values())
    assert builds[1][0] < builds[0][1]  # two workers side by side: the second started before the first ended

    _, started, (again,) = _execute(paths, monkeypatch)
    assert again.counts() == {"cache_hit": 2, "compile_error": 1}  # a failed build is tried again, only it
    assert sorted(started) == ["cpp_alpha", "cpp_beta"]


def test_a_solution_with_nothing_to_compile_is_left_to_its_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KBENCH_CACHE_DIR", str(tmp_path))
    report = build_pool.build_all([SOLUTIONS / "affine_relu" / "correct_torch.py"], "cpu", Timeouts())
    assert report.counts() == {"not_built": 1} and report.summed_s() == 0.0


def test_a_load_error_in_the_pool_settles_the_job_on_the_cpu_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KBENCH_CACHE_DIR", str(tmp_path))
    broken = tmp_path / "broken.py"
    broken.write_text("from torch.utils.cpp_extension import load_inline\nclass ModelNew(:\n")
    (outcome,) = build_pool.build_all([broken], "cpu", Timeouts(), at_once=1).outcomes.values()
    assert outcome.status == "load_error" and "SyntaxError" in outcome.reason
    assert outcome.failure("cpu") is not None
    assert outcome.failure("cuda") is None  # with no GPU visible an import may fail that works in the job


def test_a_build_runs_at_a_lower_cpu_priority_than_the_lanes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Its compilers inherit it, so fourteen builds do not starve a lane's workers, references and judging."""
    monkeypatch.setenv("KBENCH_CACHE_DIR", str(tmp_path))
    probe = tmp_path / "niceness_probe.py"  # names cpp_extension, so the pool imports it as a build
    probe.write_text("import os\nimport torch.utils.cpp_extension\nraise RuntimeError(f'niceness {os.nice(0)}')\n")
    (outcome,) = build_pool.build_all([probe], "cpu", Timeouts(), at_once=1).outcomes.values()
    assert outcome.status == "load_error"
    assert f"niceness {min(19, os.nice(0) + build_pool.BUILD_NICENESS)}" in outcome.reason


def test_throughput_names_the_stage_that_took_longest():
    result = JobResult(
        problem="p",
        solution="s",
        verdict=Verdict.CORRECT,
        reason="",
        device="cpu",
        wall_s=10.0,
        stage_s={"build_wait": 9.0, "reference": 1.0, "solution_load": 2.0, "solution_run": 6.0, "judge": 0.5},
    )
    rates = throughput.summary([result], wall_s=20.0, build_summed_s=16.0, build_wall_s=12.0)
    assert rates["jobs_per_hour"] == 180.0 and rates["build_pool_wall_s"] == 12.0
    assert rates["summed_s"]["build"] == 16.0 and rates["critical_s"]["build"] == 9.0
    assert rates["critical_s"]["queue"] == 2.5 and rates["dominant"] == "build"
    assert "180.0 jobs/h" in throughput.line(rates)


def test_a_solution_without_model_new_is_judged_from_its_text_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("KBENCH_CACHE_DIR", str(tmp_path / "cache"))
    named_otherwise = tmp_path / "named_otherwise.py"
    named_otherwise.write_text("import torch.nn as nn\n\n\nclass Model2(nn.Module):\n    pass\n")
    results, started, (report,) = _execute([named_otherwise], monkeypatch)
    (result,) = results
    assert result.verdict == Verdict.LOAD_ERROR and "defines no ModelNew" in result.reason
    assert result.notes == ["judged by its text: no solution worker ran"]
    assert started == [] and report.counts() == {}  # neither built nor run


@pytest.mark.slow
def test_jobs_whose_builds_are_done_run_while_later_solutions_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Builds overlap the jobs: a solution with nothing to build is judged while a C++ one is still compiling,
    and the C++ one's job waits for its own build, then finds it in the cache."""
    monkeypatch.setenv("KBENCH_CACHE_DIR", str(tmp_path / "cache"))
    cpp = tmp_path / "cpp_gamma.py"
    cpp.write_text(GOOD.format(tag="gamma"))
    plain = SOLUTIONS / "affine_relu" / "correct_torch.py"
    problem = read_problem(PROBLEMS / "affine_relu.py")
    ended: dict[str, float] = {}
    reports: list[build_pool.BuildReport] = []
    report = build_pool.Builds.report
    monkeypatch.setattr(build_pool.Builds, "report", lambda self: reports.append(report(self)) or reports[-1])
    plan = session.SessionPlan([Job(problem, read_solution(path), {}) for path in (cpp, plain)])
    outcome = session.execute(
        plan, fast_config(), "cpu", build_jobs=1, on_result=lambda r: ended.setdefault(r.solution, time.monotonic())
    )
    verdicts = {r.solution: r.verdict for r in outcome.results}
    assert verdicts == {"cpp_gamma": Verdict.CORRECT, "correct_torch": Verdict.CORRECT}
    (build,) = [o for o in reports[0].outcomes.values() if o.status == "built"]
    assert build.began is not None
    assert ended["correct_torch"] < build.began + build.worker_s  # judged before the build had ended
    assert ended["cpp_gamma"] > build.began + build.worker_s
    assert {r.solution: r.build_cache_hit for r in outcome.results}["cpp_gamma"]


@pytest.mark.slow
def test_a_lane_waiting_for_a_build_runs_that_jobs_reference_meanwhile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The plain solution of another problem runs first; then the C++ one's build is still going, and the lane runs
    its problem's reference while it waits, so the job itself finds the reference done."""
    monkeypatch.setenv("KBENCH_CACHE_DIR", str(tmp_path / "cache"))
    cpp = tmp_path / "cpp_delta.py"
    cpp.write_text(GOOD.format(tag="delta"))
    jobs = [
        Job(read_problem(PROBLEMS / "affine_relu.py"), read_solution(cpp), {}),
        Job(read_problem(PROBLEMS / "scaled_copy.py"), read_solution(SOLUTIONS / "scaled_copy" / "honest.py"), {}),
    ]
    outcome = session.execute(session.SessionPlan(jobs), fast_config(), "cpu", build_jobs=1)
    results = {r.solution: r for r in outcome.results}
    assert {name: r.verdict for name, r in results.items()} == {"cpp_delta": "correct", "honest": "correct"}
    assert [r.solution for r in outcome.results] == ["honest", "cpp_delta"]  # the job ready first ran first
    waited = results["cpp_delta"].stage_s
    assert waited["references_ahead"] > 0 and waited["reference_run"] > 0, waited
    assert waited["reference"] < 0.5 * waited["references_ahead"]  # the job found its reference done
    assert "references_ahead" not in results["honest"].stage_s
    assert outcome.throughput["summed_s"]["reference"] >= waited["references_ahead"]


def test_build_steps_are_read_from_ninjas_log(tmp_path: Path):
    folder = tmp_path / "ext" / "kbench_sol"
    folder.mkdir(parents=True)
    (folder / ".ninja_log").write_text(
        "# ninja log v7\n"
        "0\t21000\t1\tmain.o\tab\n"
        "0\t38500\t1\tcuda.cuda.o\tcd\n"
        "38500\t39250\t1\tkbench_sol.so\tef\n"
        "0\t900\t2\tmain.o\tab\n"  # main.o built again (a source edit): its last build counts
    )
    assert build_pool.build_steps(tmp_path / "ext") == {"c++": 0.9, "cuda": 38.5, "link": 0.75}
    assert build_pool.build_steps(tmp_path / "missing") == {}
    rates = {"jobs": 1, "wall_s": 50.0, "jobs_per_hour": 72.0, "critical_s": {"run": 1.0}, "dominant": "run"}
    rates["builds"] = {"steps_s": {"cuda": 38.5, "link": 0.75}}
    assert throughput.line(rates).endswith("; build steps summed: cuda 38 s, link 1 s")


def test_a_run_that_ends_early_kills_its_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A run stopped by an error or Ctrl-C leaves no build running (the interpreter would wait for it at exit)."""
    monkeypatch.setenv("KBENCH_CACHE_DIR", str(tmp_path / "cache"))
    paths = _corpus(tmp_path / "solutions")[:2]
    started = threading.Event()
    builds = build_pool.start_builds(paths, "cpu", Timeouts(), at_once=1, on_start=lambda n, total: started.set())
    assert started.wait(60)
    began = time.monotonic()
    builds.cancel()
    outcome = builds.outcome(paths[0])  # its worker was killed: the build ends now, not after compiling
    assert time.monotonic() - began < 20 and outcome is not None and outcome.status != "built"
    with pytest.raises(CancelledError):
        builds.outcome(paths[1])  # never started


def test_only_an_extension_one_level_down_counts_as_built(tmp_path: Path):
    from kbench.build_cache import has_built_extension

    (tmp_path / "triton" / "ab12").mkdir(parents=True)
    (tmp_path / "triton" / "ab12" / "__triton_launcher.so").write_bytes(b"")  # a Triton cache's kernel launcher
    assert not has_built_extension(tmp_path)
    (tmp_path / "kbench_pool_x").mkdir()
    (tmp_path / "kbench_pool_x" / "kbench_pool_x.so").write_bytes(b"")
    assert has_built_extension(tmp_path)
