"""Workers run side by side: each followed on its own clock, none taken for another's orphan; and the
references that time nothing run together before the jobs, a failure there retried alone."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    PROBLEMS,
    SOLUTIONS,
    as_if_timed_on_a_quiet_host,
    count_reference_workers,
    fast_config,
    trust_every_check,
    unconfined,
)

from kbench.baselines import Baseline
from kbench.catalog import read_problem
from kbench.config import PipelineConfig
from kbench.isolation import WorkerCommand, run_workers
from kbench.runner import Runner
from kbench.store import JsonStore

# A stand-in worker: ``python -m sleepy_worker SECONDS [orphan] FD`` sleeps, may leave a detached process
# behind (a double fork into a new session), then reports its pid.
SLEEPY = """
import json, os, subprocess, sys, time
seconds, *rest = sys.argv[1:-1]
fd = int(sys.argv[-1])
if rest == ["orphan"]:
    subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(60)"], start_new_session=True)
time.sleep(float(seconds))
os.write(fd, (json.dumps({"result": {"pid": os.getpid()}}) + "\\n").encode())
"""


@pytest.fixture
def sleepy(tmp_path: Path):
    (tmp_path / "sleepy_worker.py").write_text(SLEEPY)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    def command(*args: str, timeout: float = 30.0) -> WorkerCommand:
        log = tmp_path / f"{len(list(tmp_path.glob('*.log')))}.log"
        return WorkerCommand("sleepy_worker", list(args), log, {"run": timeout}, env=env)

    return command


def test_workers_run_side_by_side_or_in_turn(sleepy):
    started = time.monotonic()
    runs = run_workers([sleepy("1.5"), sleepy("1.5"), sleepy("1.5")])
    together = time.monotonic() - started
    assert [run.last("result") is not None for run in runs] == [True] * 3
    started = time.monotonic()
    run_workers([sleepy("1.5"), sleepy("1.5"), sleepy("1.5")], at_once=1)
    in_turn = time.monotonic() - started
    assert together < 4.0 and in_turn >= 4.5, (together, in_turn)  # 1.5 s apiece: overlapped, or one by one


def test_each_worker_has_its_own_clock(sleepy):
    hung, quick = run_workers([sleepy("60", timeout=1.0), sleepy("0.5")])
    assert hung.timed_out_phase == "run" and hung.last("result") is None
    assert quick.timed_out_phase is None and quick.last("result") is not None


# The start of each stand-in worker below: it sends its messages over the channel the parent passed it last.
SENDS = """
import json, os, sys, time
fd = int(sys.argv[-1])
def send(**message):
    os.write(fd, (json.dumps(message) + "\\n").encode())
"""


def stand_in(tmp_path: Path, name: str, body: str) -> dict[str, str]:
    """Write the stand-in worker module ``name`` (``SENDS``, then ``body``); return the environment that finds it."""
    (tmp_path / f"{name}.py").write_text(SENDS + body)
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


# A stand-in worker that marks steps of its run phase: two honest marks, then one repeated and one unknown.
MARKS = """
time.sleep(0.3)
send(step="weights")
time.sleep(0.6)
send(step="trials")
send(step="weights")
send(step="speedup")
send(result={})
"""


def test_the_parent_times_the_run_steps_a_worker_marks_and_refuses_any_other_mark(tmp_path: Path):
    env = stand_in(tmp_path, "marks_worker", MARKS)
    (run,) = run_workers([WorkerCommand("marks_worker", [], tmp_path / "marks.log", {"run": 30.0}, env=env)])
    assert run.last("result") is not None, run.log_tail
    assert set(run.step_s) == {"weights", "trials"}
    # Each mark is timed when the parent reads it, up to a poll interval late: the marks' sum is exact, each alone
    # may lend the next a little.
    steps = run.step_s
    assert steps["weights"] >= 0.3 and steps["trials"] >= 0.45 and 0.9 <= sum(steps.values()) < run.phase_s["run"]
    assert run.violations == ["step 'weights'", "step 'speedup'"]


# A stand-in worker with steps in two phases: each marked in its own phase, then one marked in the wrong one.
PHASED_MARKS = """
send(step="timing")
send(phase="compile")
time.sleep(0.3)
send(step="compile_call")
send(step="trials")
send(result={})
"""


def test_each_phase_has_its_own_steps_timed_from_the_phase_start(tmp_path: Path):
    env = stand_in(tmp_path, "phased_worker", PHASED_MARKS)
    steps = {"run": ("trials", "timing"), "compile": ("compile_call",)}
    phases = {"run": 30.0, "compile": 30.0}
    command = WorkerCommand("phased_worker", [], tmp_path / "phased.log", phases, env, steps=steps)
    (run,) = run_workers([command])
    assert run.last("result") is not None, run.log_tail
    assert set(run.step_s) == {"timing", "compile_call"} and run.step_s["compile_call"] >= 0.3
    assert run.violations == ["step 'trials'"], "a run step marked in the compile phase is not the worker's to mark"


STEPS = """
send(step="weights")
send(step="trials")
time.sleep(float(sys.argv[1]))  # the timing turns: not held to the step limit
send(step="turns")
time.sleep(float(sys.argv[2]))  # the perturbed trials: held to it
send(step="perturbed")
send(result={})
"""


def test_a_step_that_outlives_the_step_limit_ends_the_run_but_long_timing_turns_do_not(tmp_path: Path):
    env = stand_in(tmp_path, "steps_worker", STEPS)

    def command(turns_s: str, perturbed_s: str) -> WorkerCommand:
        log = tmp_path / f"steps-{turns_s}-{perturbed_s}.log"
        return WorkerCommand("steps_worker", [turns_s, perturbed_s], log, {"run": 30.0}, env=env, step_timeout=1.0)

    started = time.monotonic()
    hung, slow_turns = run_workers([command("0", "60"), command("2.5", "0")])
    assert hung.timed_out_phase == "run" and hung.timed_out_step == "perturbed" and hung.timeout_s == 1.0
    assert time.monotonic() - started < 10  # the step limit, not the run phase's 30 s
    assert slow_turns.timed_out_phase is None and slow_turns.last("result") is not None, slow_turns.log_tail
    assert slow_turns.step_s["turns"] >= 2.5


def test_an_orphan_is_killed_after_all_workers_not_a_worker_beside_it(sleepy):
    leaves, slower = run_workers([sleepy("0.2", "orphan"), sleepy("2.0")])
    assert slower.returncode == 0 and slower.last("result") is not None, slower.log_tail
    assert leaves.orphans_killed >= 1


def _problem_failing_once(tmp_path: Path) -> Path:
    """affine_relu, with a reference that fails the first time it is loaded (a marker file says when)."""
    marker = tmp_path / "fail-next-load"
    source = (PROBLEMS / "affine_relu.py").read_text()
    path = tmp_path / "flaky_affine.py"
    path.write_text(
        f"import pathlib\n_marker = pathlib.Path({str(marker)!r})\n"
        "if _marker.exists():\n    _marker.unlink()\n    raise MemoryError('out of memory beside the others')\n"
        + source
    )
    return path


@pytest.mark.slow
def test_cached_references_run_together_and_one_that_fails_there_runs_again_alone(tmp_path: Path, monkeypatch):
    problems = [read_problem(PROBLEMS / "affine_relu.py"), read_problem(_problem_failing_once(tmp_path))]
    store = JsonStore(tmp_path / "baselines.json")
    with Runner(fast_config(), "cpu", baseline_cache=store) as cold:
        first = [cold.references.get(problem, {}) for problem in problems]  # times each, alone: fills the cache
        assert cold.references.prepare([(problem, {}) for problem in problems]).count == 0  # all done already
    assert all(ref.error is None and not ref.baseline_cached for ref in first)
    assert len(json.loads((tmp_path / "baselines.json").read_text())) == 2
    as_if_timed_on_a_quiet_host(store)
    trust_every_check(monkeypatch)

    (tmp_path / "fail-next-load").touch()
    batches = count_reference_workers(monkeypatch)
    with Runner(fast_config(), "cpu", baseline_cache=store) as warm:
        assert warm.references.prepare([(problem, {}) for problem in problems]).count == 2
        assert batches == [2]
        steady, flaky = (warm.references.get(problem, {}) for problem in problems)
    assert batches == [2, 1], "only the reference that failed beside the other runs again, alone"
    assert steady.error is None and flaky.error is None, flaky.error
    assert steady.baseline_cached and flaky.baseline_cached
    assert not (tmp_path / "fail-next-load").exists()


def test_what_an_exited_worker_wrote_is_read_even_when_its_readiness_was_missed(sleepy, monkeypatch):
    """Closing one worker can take long enough for another to write and exit after the shared ``select``
    returned: its last messages must still be read. Simulated by a ``select`` that never reports readiness
    while it waits, so the loop only learns of the worker's exit."""
    import kbench.isolation as isolation

    real_select = isolation.select.select

    def stale(rlist, wlist, xlist, timeout):
        return real_select(rlist, wlist, xlist, 0) if timeout == 0 else (time.sleep(timeout) or ([], [], []))

    monkeypatch.setattr(isolation.select, "select", stale)
    (run,) = run_workers([sleepy("0.2")])
    assert run.last("result") is not None, run.log_tail


def test_an_output_replaced_by_a_link_or_grown_after_announcing_is_refused_unread(tmp_path: Path):
    from kbench.output_checks import TamperedOutput, read_announced
    from kbench.spec import bytes_digest

    data = b"the bytes the worker wrote"
    path = tmp_path / "new_trial0.kbt"
    path.write_bytes(data)
    announced = {path.name: (bytes_digest(data), len(data))}
    assert bytes(read_announced(path, announced)) == data

    path.unlink()
    path.symlink_to("/dev/zero")  # read whole, it would never end
    with pytest.raises(TamperedOutput):
        read_announced(path, announced)
    path.unlink()
    with path.open("wb") as grown:  # a sparse file far larger than announced: refused by its size alone
        grown.truncate(1 << 40)
    with pytest.raises(TamperedOutput):
        read_announced(path, announced)


@pytest.mark.slow
def test_a_failure_of_kbench_while_preparing_references_leaves_them_to_their_jobs(tmp_path: Path, monkeypatch):
    problem = read_problem(PROBLEMS / "affine_relu.py")
    store = JsonStore(tmp_path / "baselines.json")
    with Runner(fast_config(), "cpu", baseline_cache=store) as cold:
        assert cold.references.get(problem, {}).error is None  # fills the baseline cache
    as_if_timed_on_a_quiet_host(store)
    trust_every_check(monkeypatch)
    from kbench.references import References

    real = References._finish
    calls: list[int] = []

    def failing_once(self, job, worker):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("No space left on device")
        return real(self, job, worker)

    monkeypatch.setattr(References, "_finish", failing_once)
    with Runner(fast_config(), "cpu", baseline_cache=store) as warm:
        assert warm.references.prepare([(problem, {})]).count == 1  # no exception escapes
        reference = warm.references.get(problem, {})
    assert reference.error is None and reference.baseline_cached and len(calls) == 2


@pytest.mark.slow
def test_the_next_solution_worker_starts_early_and_imports_the_solution_only_after_the_gate(
    tmp_path: Path, monkeypatch
):
    from kbench.catalog import read_solution
    from kbench.results import Verdict
    from kbench.runner import Job

    log = tmp_path / "imports"
    monkeypatch.setenv("KBENCH_TEST_IMPORT_LOG", str(log))
    problem = read_problem(PROBLEMS / "affine_relu.py")
    first = Job(problem, read_solution(SOLUTIONS / "affine_relu" / "correct_torch.py"))
    second = Job(problem, read_solution(SOLUTIONS / "affine_relu" / "records_import.py"))
    config = unconfined(fast_config()).model_copy(update={"pipeline": PipelineConfig(prefetch="on")})  # it logs imports
    with Runner(config, "cpu") as runner:
        runner.references.get(problem, {})  # ready: the next job's worker may start while the first job runs
        one = runner.run(first, next_job=second)
        first_done = time.time()
        early, _partner = runner._starter.waiting()  # the solution worker and its reference partner
        assert not log.exists(), "the solution was imported before its gate opened"
        two = runner.run(second)
    assert one.verdict == Verdict.CORRECT and two.verdict == Verdict.CORRECT, (one.reason, two.reason)
    imported_at, pid = log.read_text().split()
    assert int(pid) == early.pid and float(imported_at) > first_done
    assert two.stage_s["solution_wait"] > 0


@pytest.mark.slow
def test_a_worker_started_early_for_a_job_that_does_not_come_is_stopped(tmp_path: Path, monkeypatch):
    from kbench.catalog import read_solution
    from kbench.results import Verdict
    from kbench.runner import Job

    monkeypatch.setenv("KBENCH_TEST_IMPORT_LOG", str(tmp_path / "imports"))
    problem = read_problem(PROBLEMS / "affine_relu.py")
    correct = Job(problem, read_solution(SOLUTIONS / "affine_relu" / "correct_torch.py"))
    never = Job(problem, read_solution(SOLUTIONS / "affine_relu" / "records_import.py"))
    config = unconfined(fast_config()).model_copy(update={"pipeline": PipelineConfig(prefetch="on")})  # it logs imports
    with Runner(config, "cpu") as runner:
        runner.references.get(problem, {})
        runner.run(correct, next_job=never)
        early, partner = runner._starter.waiting()  # the solution worker and its reference partner
        other = runner.run(correct)  # not the job they were started for
        assert other.verdict == Verdict.CORRECT, other.reason
        assert not runner._starter.waiting()
        assert not Path(f"/proc/{early.pid}").exists() and not Path(f"/proc/{partner.pid}").exists()
        runner.run(correct, next_job=never)
        early, partner = runner._starter.waiting()
    assert not Path(f"/proc/{early.pid}").exists(), "closing the runner leaves no worker waiting"
    assert not Path(f"/proc/{partner.pid}").exists(), "... nor a reference partner"
    assert not (tmp_path / "imports").exists(), "no solution got past its gate"


@pytest.mark.slow
def test_the_next_problems_reference_worker_starts_early_and_computes_only_past_its_gate():
    from kbench.catalog import read_solution
    from kbench.results import Verdict
    from kbench.runner import Job

    def job(problem: str, solution: str) -> Job:
        return Job(read_problem(PROBLEMS / f"{problem}.py"), read_solution(SOLUTIONS / problem / f"{solution}.py"))

    first, second = job("affine_relu", "correct_torch"), job("scaled_copy", "honest")
    third = job("wide_linear", "honest")
    config = fast_config().model_copy(update={"pipeline": PipelineConfig(prefetch="on")})
    with Runner(config, "cpu") as runner:
        one = runner.run(first, next_job=second)
        (early,) = runner.references.waiting()  # second's reference: no solution worker can start before it ran
        deadline = time.monotonic() + 60  # its start may outlast the first job on a loaded host
        while early.phase != "wait" and time.monotonic() < deadline:
            early.drain()
            time.sleep(0.05)
        assert early.phase == "wait" and set(early.run.phase_s) == {"load"}, "it computed nothing before its gate"
        assert not runner._starter.waiting()
        two = runner.run(second, next_job=third)
        assert not Path(f"/proc/{early.pid}").exists()
        reference = runner.references.get(second.problem, {})
        (left,) = runner.references.waiting()  # third's, for a job that never comes
    assert not Path(f"/proc/{left.pid}").exists(), "closing the runner leaves no reference worker waiting"
    assert one.verdict == Verdict.CORRECT and two.verdict == Verdict.CORRECT, (one.reason, two.reason)
    assert set(reference.phase_s) == {"load", "wait", "run"} and two.stage_s["reference_wait"] > 0
    with Runner(fast_config(), "cpu") as alone:  # the same reference, run by a worker that never waited
        expected = alone.references.get(second.problem, {})
    assert "wait" not in expected.phase_s and len(reference.trials) == len(expected.trials) > 0
    for got, want in zip(reference.trials, expected.trials, strict=True):
        assert all(map(torch.equal, got["tensors"], want["tensors"]))


@pytest.mark.slow
def test_a_warm_run_starts_its_first_solution_worker_before_the_references_run(tmp_path: Path, monkeypatch):
    from kbench.catalog import read_solution
    from kbench.results import Verdict
    from kbench.runner import Job

    log = tmp_path / "imports"
    monkeypatch.setenv("KBENCH_TEST_IMPORT_LOG", str(log))
    problem = read_problem(PROBLEMS / "affine_relu.py")
    job = Job(problem, read_solution(SOLUTIONS / "affine_relu" / "records_import.py"))
    config = unconfined(fast_config()).model_copy(update={"pipeline": PipelineConfig(prefetch="on")})  # it logs imports
    store = JsonStore(tmp_path / "baselines.json")
    with Runner(config, "cpu", baseline_cache=store) as cold:
        cold.start_first(job)
        assert not cold._starter.waiting(), "nothing cached yet: the output size is not known"
        reference = cold.references.get(problem, {})  # timed, and cached with its output size
    (entry,) = json.loads(store.path.read_text()).values()
    assert entry["output_numel"] == reference.output_numel > 0

    with Runner(config, "cpu", baseline_cache=store) as warm:
        warm.start_first(job)
        early, _partner = warm._starter.waiting()  # started before any reference of this run
        assert warm.references.ready(problem, {}) is None
        assert warm.references.prepare([(problem, {})]).count == 1
        assert not log.exists(), "the solution was imported before its gate opened"
        result = warm.run(job)
    assert result.verdict == Verdict.CORRECT, result.reason
    assert int(log.read_text().split()[1]) == early.pid  # the job ran in the worker started first

    # A cached size that is not the reference's (another torch, say): that worker is never let through.
    (key,) = json.loads(store.path.read_text())
    store.put(key, dataclasses.replace(store.get(key, Baseline), output_numel=1))
    log.unlink()
    with Runner(config, "cpu", baseline_cache=store) as stale:
        stale.start_first(job)
        wrong, _partner = stale._starter.waiting()
        result = stale.run(job)
    assert result.verdict == Verdict.CORRECT, result.reason
    assert int(log.read_text().split()[1]) != wrong.pid and not Path(f"/proc/{wrong.pid}").exists()


# In a fresh process: native threads before and after a CPU operation that splits over torch's thread pool, as a
# perturbed trial's inputs made on the CPU do on a GPU, after the thread census's baseline.
_THREADS_AFTER_CPU_WORK = """
import os, sys, torch
from kbench import execution
if sys.argv[1] == "started":
    execution.start_cpu_threads()
before = len(os.listdir("/proc/self/task"))
inputs = torch.rand(1 << 22) * 4
print(before, len(os.listdir("/proc/self/task")))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_torch_cpu_threads_start_before_the_thread_census_so_cpu_made_inputs_add_none():
    def threads(mode: str) -> tuple[int, int]:
        ran = subprocess.run(
            [sys.executable, "-c", _THREADS_AFTER_CPU_WORK, mode], capture_output=True, text=True, check=True
        )
        before, after = ran.stdout.split()
        return int(before), int(after)

    if torch.get_num_threads() > 1:  # with one thread there is no pool to start, and nothing to see
        before, after = threads("cold")
        assert after > before  # the pool starts at the first large CPU operation
    before, after = threads("started")
    assert after == before
