from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from kbench.catalog import Problem, read_problem, read_solution
from kbench.config import KbenchConfig, Timeouts, TimingConfig
from kbench.results import JobResult
from kbench.runner import Job, Runner
from kbench.store import JsonStore

FIXTURES = Path(__file__).parent / "fixtures"
PROBLEMS = FIXTURES / "problems"
SOLUTIONS = FIXTURES / "solutions"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """With KBENCH_TEST_REPORTS set to a folder, each test's outcome and time, and a failure's whole report, are
    written there as the test ends: a device call cut off by its time limit still brings back why a test failed
    (pytest prints its summary only at the end). Under xdist the hook runs in each worker and again in the
    controller: only the controller writes."""
    folder = os.environ.get("KBENCH_TEST_REPORTS")
    if not folder or os.environ.get("PYTEST_XDIST_WORKER") or (report.when != "call" and not report.failed):
        return
    with open(Path(folder) / "test-reports.txt", "a", encoding="utf-8") as out:
        out.write(f"{report.outcome.upper()} {report.nodeid} ({report.when}, {report.duration:.1f} s)\n")
        if report.failed:
            out.write(report.longreprtext[-8000:] + "\n\n")


# What the user set before the session, if anything: their own cache folder is then used as asked.
USER_CACHE_DIR = os.environ.get("KBENCH_CACHE_DIR") or None


@pytest.fixture(scope="session", autouse=True)
def kbench_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """kbench's cache (builds, baselines, calibration) in a temporary folder for the whole session, so a test
    run never writes into the user's ~/.cache/kbench, and extensions built by one test are reused by the next
    (one folder per xdist worker). Worker processes inherit the variable. A KBENCH_CACHE_DIR set by the user
    is kept."""
    if USER_CACHE_DIR:
        yield Path(USER_CACHE_DIR)
        return
    root = tmp_path_factory.mktemp("kbench-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KBENCH_CACHE_DIR", str(root))
        yield root


@pytest.fixture(autouse=True)
def gpu_share(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """GPU tests share the GPU, except those marked ``gpu_alone``, which wait until no other GPU test of this
    session (all xdist workers: the lock file sits above their temporary folders) runs. Some compare times
    taken seconds apart, and another test's kernels time-sliced in between would stretch one of them. Others
    keep a kernel running (a spinning fault, sleeps on a side stream): beside them, another test's timed calls
    stretch, and a correct solution is rejected as having slowed the reference (`reference_slowed`)."""
    if request.node.get_closest_marker("gpu") is None:
        yield
        return
    alone = request.node.get_closest_marker("gpu_alone") is not None
    with open(tmp_path_factory.getbasetemp().parent / "kbench-gpu.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        yield


def fast_config(**timeouts: float) -> KbenchConfig:
    """Few trials and timed calls: these tests check verdicts, not speed."""
    return KbenchConfig(
        trials=2,
        # A loose target and no minimum times: the first batch of 3 rounds always satisfies it, so these tests
        # stay fast.
        timing=TimingConfig(warmup=1, warmup_s=0.0, repeats=3, min_time_s=0.0, input_sets=1, target_rse=10.0),
        timeouts=Timeouts(**{"reference_s": 120.0, "build_s": 600.0, "run_s": 60.0, **timeouts}),
    )


@pytest.fixture
def make_catalog(tmp_path: Path):
    """A throwaway catalog: copies of fixture problems with just the named solutions."""

    def build(problem: str, solutions: list[str], source_problem: Path = PROBLEMS) -> tuple[Path, Path]:
        problems_dir, solutions_dir = tmp_path / "problems", tmp_path / "solutions"
        problems_dir.mkdir(exist_ok=True)
        (solutions_dir / problem).mkdir(parents=True, exist_ok=True)
        shutil.copy(source_problem / f"{problem}.py", problems_dir)
        for name in solutions:
            shutil.copy(SOLUTIONS / problem / f"{name}.py", solutions_dir / problem)
        return problems_dir, solutions_dir

    return build


def run_fixture(runner: Runner, problem: Problem, name: str) -> JobResult:
    """Judge the fixture solution ``tests/fixtures/solutions/<problem>/<name>.py``."""
    return runner.run(Job(problem, read_solution(SOLUTIONS / problem.name / f"{name}.py")))


def kept_outputs_rewritten(device: str) -> tuple[JobResult, JobResult]:
    """The solution is right in its trials and wrong in every timed call; when a round is kept for checking, its
    next call writes the right answer for that round into what was kept. With 40 rounds and 2 kept, the last round
    (which no later call can make right) is rarely among them: only a kept output out of the solution's reach
    catches it, and the first kept round is always one a later call tries to rewrite. Its result, and an honest
    solution's under the same timing. The reference partner copied each kept output out of the solution's process
    as it was kept, so the wrong answer is what it compares: ``timed_output_mismatch``."""
    config = fast_config(run_s=30.0)
    config = config.model_copy(update={"timing": config.timing.model_copy(update={"repeats": 40, "checked_calls": 2})})
    affine = read_problem(PROBLEMS / "affine_relu.py")
    with Runner(config, device) as runner:
        return run_fixture(runner, affine, "rewrites_kept_outputs"), run_fixture(runner, affine, "correct_torch")


def as_if_timed_on_a_quiet_host(store: JsonStore) -> None:
    """Mark every entry of a baseline cache as timed while the host was quiet. A test's first run may have timed
    the reference while something else kept the host busy (a CI machine of two cores), which the cache rightly
    refuses to trust; tests of reuse need a trusted entry. The refusal has tests of its own (test_baselines.py)."""
    from kbench.baselines import Baseline

    for key, entry in store.entries().items():
        quiet = {**entry["measured"], "cpu_wait": 0.0, "load": 0.0}
        store.put(key, Baseline(**{**entry, "measured": quiet}))


def trust_every_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let no short check of a cached reference time refuse it. On a loaded host (a CI machine of two cores) the
    first timing can be slowed far more than the check, which then rightly convicts the cached time; tests of
    batching and reuse need the entry kept. The check has tests of its own (test_baselines.py)."""
    import kbench.baselines

    monkeypatch.setattr(kbench.baselines, "check_refusal", lambda *_args: None)


def unconfined(config: KbenchConfig) -> KbenchConfig:
    """``config`` with the solution workers left unconfined, for tests whose fixtures report to the test through a
    file outside their job's folder, which a confined worker cannot write (the sandbox has tests of its own:
    test_sandbox.py)."""
    return config.model_copy(update={"integrity": config.integrity.model_copy(update={"sandbox": "off"})})


def count_reference_workers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Reference workers run, per batch of workers run together, however each was started."""
    import kbench.references

    batches: list[int] = []
    real = kbench.references.run_workers

    def counting(commands: list[Any], *args: Any, started: list[Any] | None = None, **kwargs: Any) -> Any:
        batches.append(len(commands) + len(started or []))
        return real(commands, *args, started=started, **kwargs)

    monkeypatch.setattr(kbench.references, "run_workers", counting)
    return batches
