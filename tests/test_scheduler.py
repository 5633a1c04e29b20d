"""The scheduler over several devices (issue #18), with fake devices and fake runners: never two jobs on one
device at once, every device busy, a job waits for its own build only, and a recording error stops the run
without losing what was recorded."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from conftest import PROBLEMS, SOLUTIONS, fast_config

from kbench import throughput
from kbench.catalog import Problem, Solution, read_problem
from kbench.devices import CPU, Device, DeviceError, devices_for, select_gpus
from kbench.results import JobResult, Verdict
from kbench.runner import Finish, Job
from kbench.scheduler import Progress, Scheduler, chunks

GPUS = [Device("cuda", index, "Fake GPU", f"GPU-{index:04d}", "host-a") for index in range(3)]


def _jobs(problems: int, solutions: int) -> list[Job]:
    base = read_problem(PROBLEMS / "affine_relu.py")
    jobs = []
    for p in range(problems):
        problem = Problem(f"problem_{p}", Path(f"/fake/problem_{p}.py"), base.constants)
        jobs += [Job(problem, Solution(f"s{s}", Path(f"/fake/{p}/s{s}.py"), ("cuda",))) for s in range(solutions)]
    return jobs


def _result(job: Job, device: str = "cuda", verdict: Verdict = Verdict.CORRECT) -> JobResult:
    return JobResult(problem=job.problem.name, solution=job.solution.name, verdict=verdict, reason="", device=device)


class FakeRunner:
    """Times nothing: sleeps, and writes down which device ran what, and when. With ``judge_s``, its jobs' finish
    (their judging) sleeps that long and is judged beside the next job, and ``judged`` logs when."""

    def __init__(
        self,
        device: Device,
        log: list[tuple[str, str, float, float]],
        lock: threading.Lock,
        judge_s: float = 0.0,
        judged: list[tuple[str, float, float]] | None = None,
    ) -> None:
        self.device, self.log, self.lock = device, log, lock
        self.judges_beside, self.judge_s, self.judged = judge_s > 0, judge_s, judged if judged is not None else []
        self.guesses: list[tuple[Job, Job | None]] = []  # (job, the next job it was told of, for an early start)
        self.prepared: list[str] = []  # the problems whose references it ran ahead of their jobs, in order
        self.told_next: list[str | None] = []  # ... and for each, the problem it was told would come next

    def prepare_reference(self, job: Job, then: Job | None = None) -> dict[str, float]:
        if job.problem.name in self.prepared:
            return {}
        time.sleep(0.01)
        self.prepared.append(job.problem.name)
        self.told_next.append(then.problem.name if then is not None else None)
        return {"load": 0.004, "run": 0.006}

    def start(self, job: Job, next_job: Job | None = None) -> Finish:
        self.guesses.append((job, next_job))
        began = time.monotonic()
        time.sleep(0.02)
        name = f"{job.problem.name}/{job.solution.name}"
        with self.lock:
            self.log.append((self.device.label, name, began, time.monotonic()))

        def finish() -> JobResult:
            judging = time.monotonic()
            time.sleep(self.judge_s)
            with self.lock:
                self.judged.append((name, judging, time.monotonic()))
            return _result(job)

        return finish


def _scheduler(devices: list[Device], log: list, settled=lambda job: None, on_result=lambda r: None) -> Scheduler:
    lock = threading.Lock()

    @contextmanager
    def open_lane(device: Device) -> Iterator[FakeRunner]:
        yield FakeRunner(device, log, lock)

    return Scheduler(devices, open_lane, settled, on_result=on_result)


def test_every_device_runs_jobs_and_none_runs_two_at_once():
    log: list[tuple[str, str, float, float]] = []
    jobs = _jobs(problems=6, solutions=4)
    results = _scheduler(GPUS, log).run(jobs)
    assert sorted((r.problem, r.solution) for r in results) == sorted((j.problem.name, j.solution.name) for j in jobs)
    assert len(log) == len(jobs)  # each job ran once
    assert {device for device, *_ in log} == {gpu.label for gpu in GPUS}  # every GPU was used
    for gpu in GPUS:
        spans = sorted((began, ended) for device, _, began, ended in log if device == gpu.label)
        assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans)), gpu.label
    # A problem's jobs ran on one device, its reference once: six problems of four share no device between them.
    for p in range(6):
        assert len({device for device, name, *_ in log if name.startswith(f"problem_{p}/")}) == 1


def test_one_problem_with_many_solutions_still_spreads_over_every_device():
    jobs = _jobs(problems=1, solutions=9)
    assert [len(chunk) for chunk in chunks(jobs, 3)] == [3, 3, 3]
    log: list = []
    _scheduler(GPUS, log).run(jobs)
    assert {device for device, *_ in log} == {gpu.label for gpu in GPUS}


def test_a_job_settled_by_its_build_never_reaches_a_device():
    jobs = _jobs(problems=2, solutions=2)
    broken = jobs[1]
    settled = {id(broken): _result(broken, verdict=Verdict.COMPILE_ERROR)}
    log: list = []
    results = _scheduler(GPUS[:2], log, settled=lambda job: settled.get(id(job))).run(jobs)
    assert {r.solution: r.verdict for r in results if r.problem == broken.problem.name}["s1"] == Verdict.COMPILE_ERROR
    assert f"{broken.problem.name}/{broken.solution.name}" not in {name for _, name, *_ in log}
    assert len(log) == 3


def _kept_lanes() -> tuple[list[FakeRunner], Callable[[Device], AbstractContextManager[FakeRunner]]]:
    """An ``open_lane`` whose runners are kept in the list returned with it, to look at after the run."""
    lock, runners = threading.Lock(), []

    @contextmanager
    def open_lane(device: Device) -> Iterator[FakeRunner]:
        runners.append(FakeRunner(device, [], lock))
        yield runners[-1]

    return runners, open_lane


def test_each_job_is_told_the_next_one_its_lane_runs_across_problems_so_its_worker_starts_early():
    runners, open_lane = _kept_lanes()
    jobs = _jobs(problems=3, solutions=2)
    Scheduler([GPUS[0]], open_lane, lambda job: None).run(jobs)
    (runner,) = runners
    ran = [job for job, _ in runner.guesses]
    assert ran == jobs
    # Every guess came true, the first job of each problem's included; the last job has none to guess.
    assert [guess for _, guess in runner.guesses] == [*ran[1:], None]


def test_a_lane_waiting_for_a_build_runs_the_references_of_its_coming_jobs_meanwhile():
    runners, open_lane = _kept_lanes()
    jobs = _jobs(problems=4, solutions=1)
    ready = lambda job: len(runners[0].prepared) >= 2  # noqa: E731  every build ends once two references ran
    results = Scheduler([GPUS[0]], open_lane, lambda job: None, ready=ready).run(jobs)
    (runner,) = runners
    # Waiting for the first job's build, the lane ran that job's reference, then the next queued job's, and
    # stopped as the build ended; the jobs then ran in their order, the others' references left to them.
    assert runner.prepared == ["problem_0", "problem_1"]
    assert runner.told_next == ["problem_1", "problem_2"]  # whose reference worker may start early meanwhile
    assert [job for job, _ in runner.guesses] == jobs
    stages = {result.problem: result.stage_s for result in results}
    assert stages["problem_0"]["references_ahead"] >= 0.02
    assert stages["problem_0"]["reference_load"] == pytest.approx(0.008)  # both references' phases, summed
    assert all("references_ahead" not in stages[f"problem_{p}"] for p in (1, 2, 3))


def test_with_several_lanes_a_waiting_lane_runs_only_its_own_chunks_references():
    runners, open_lane = _kept_lanes()
    jobs = _jobs(problems=2, solutions=2)  # two chunks: one problem each
    started = time.monotonic()
    ready = lambda job: time.monotonic() - started > 0.3  # noqa: E731  every build ends 0.3 s in
    Scheduler(GPUS[:2], open_lane, lambda job: None, ready=ready).run(jobs)
    for runner in runners:
        ran = {job.problem.name for job, _ in runner.guesses}
        assert set(runner.prepared) <= ran, (runner.prepared, ran)  # no reference of another lane's problem
    assert sorted(name for runner in runners for name in runner.prepared) == ["problem_0", "problem_1"]


def _disk_full_after(kept: int, recorded: list[JobResult]):
    """A recorder that keeps ``kept`` results, then finds the disk full."""

    def record(result: JobResult) -> None:
        if len(recorded) == kept:
            raise OSError("No space left on device")
        recorded.append(result)

    return record


def test_a_recording_error_stops_every_lane_and_keeps_what_was_recorded():
    recorded: list[JobResult] = []
    record = _disk_full_after(4, recorded)
    log: list = []
    with pytest.raises(OSError, match="No space"):
        _scheduler(GPUS, log, on_result=record).run(_jobs(problems=10, solutions=3))
    assert len(recorded) == 4
    assert len(log) < 30  # the lanes stopped: no new chunk was taken after the error


def test_progress_says_built_running_judged_left_and_a_rate():
    progress = Progress(10, builds_done=lambda: 4, builds_total=7, running=2, judged=3)
    line = progress.line()
    assert line.startswith("built 4/7 · running 2 · judged 3/10 · left 5 · ") and line.endswith(" jobs/h"), line
    progress.running, progress.judging = 1, 1
    assert progress.line().startswith("built 4/7 · running 1 · judging 1 · judged 3/10 · left 5 · ")


def _judged_beside(devices: list[Device], judge_s: float, on_result=lambda r: None):
    log: list[tuple[str, str, float, float]] = []
    judged: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    @contextmanager
    def open_lane(device: Device) -> Iterator[FakeRunner]:
        yield FakeRunner(device, log, lock, judge_s, judged)

    return Scheduler(devices, open_lane, lambda job: None, on_result=on_result), log, judged


def test_a_job_is_judged_while_the_next_one_runs_one_behind_at_most():
    jobs = _jobs(problems=1, solutions=5)
    scheduler, log, judged = _judged_beside([GPUS[0]], judge_s=0.1)
    began = time.monotonic()
    results = scheduler.run(jobs)
    took = time.monotonic() - began
    assert sorted(r.solution for r in results) == [f"s{i}" for i in range(5)]
    assert scheduler.progress.judged == 5 and scheduler.progress.running == scheduler.progress.judging == 0
    runs = sorted((began, ended) for _, _, began, ended in log)
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(runs))  # one timed job at a time
    judgements = sorted((began, ended) for _, began, ended in judged)
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(judgements))  # one judging at a time
    # Each job but the last was judged while the next one ran.
    ran = {name: (began, ended) for _, name, began, ended in log}
    for earlier, later in itertools.pairwise(results):
        judging = next((began, ended) for name, began, ended in judged if name.endswith(f"/{earlier.solution}"))
        running = ran[f"problem_0/{later.solution}"]
        assert judging[0] < running[1] and running[0] < judging[1], (earlier.solution, judging, running)
    assert all("judge_wait" in r.stage_s for r in results)
    assert sum(r.stage_s["judge_wait"] for r in results) > 0.2  # the lane waited for the judgements, 0.08 s each
    # On the critical path: the waits and the last judgement, not the judgements' sum (throughput has no 'judge'
    # stage time of its own from the fakes, so its wait alone shows).
    rates = throughput.summary(results, took, 0.0, 0.0)
    assert rates["critical_s"]["judge"] == pytest.approx(sum(r.stage_s["judge_wait"] for r in results))


def test_a_result_judged_beside_that_cannot_be_recorded_stops_the_run():
    recorded: list[JobResult] = []
    record = _disk_full_after(2, recorded)
    scheduler, log, _ = _judged_beside([GPUS[0]], 0.05, on_result=record)
    with pytest.raises(OSError, match="No space"):
        scheduler.run(_jobs(problems=1, solutions=8))
    assert len(recorded) == 2 and len(log) < 8


def test_gpus_are_chosen_by_number_and_a_wrong_choice_says_what_there_is():
    assert select_gpus("0,2", GPUS) == [GPUS[0], GPUS[2]]
    assert select_gpus(None, GPUS) == GPUS and select_gpus("all", GPUS) == GPUS
    with pytest.raises(DeviceError, match=r"no GPU 5; it has 0 \(Fake GPU\), 1 \(Fake GPU\), 2 \(Fake GPU\)"):
        select_gpus("5", GPUS)
    with pytest.raises(DeviceError, match="named twice"):
        select_gpus("1,1", GPUS)
    with pytest.raises(DeviceError, match="GPU numbers"):
        select_gpus("first", GPUS)
    with pytest.raises(DeviceError, match="--gpus is for --device cuda"):
        devices_for("cpu", "0")
    assert devices_for("cpu") == [CPU]
    assert devices_for("cuda", "1", available=GPUS) == [GPUS[1]]
    (only,) = devices_for("cuda", available=GPUS[:1])  # a host's one GPU, no --gpus: workers find it as always
    assert only.index == 0 and only.worker_env() == {} and only.described == "cuda:0 Fake GPU @ host-a"
    assert devices_for("cuda", "0", available=GPUS[:1])[0].worker_env()["CUDA_VISIBLE_DEVICES"] == "GPU-0000"


def test_a_workers_environment_shows_it_its_own_gpu_only():
    assert GPUS[2].worker_env() == {"CUDA_VISIBLE_DEVICES": "GPU-0002", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert CPU.worker_env() == {} and CPU.described is None
    assert GPUS[1].described == "cuda:1 Fake GPU @ host-a"


def test_a_job_whose_build_has_ended_runs_before_one_still_building():
    jobs = _jobs(problems=2, solutions=2)
    building = {jobs[0].solution.path, jobs[2].solution.path}
    log: list = []
    lock = threading.Lock()

    @contextmanager
    def open_lane(device: Device) -> Iterator[FakeRunner]:
        yield FakeRunner(device, log, lock)

    Scheduler([GPUS[0]], open_lane, lambda job: None, ready=lambda job: job.solution.path not in building).run(jobs)
    order = [name for _, name, *_ in log]
    assert order[0] == "problem_0/s1", order  # the first problem's ready job first
    assert order.index("problem_1/s1") < order.index("problem_1/s0"), order


def test_throughput_over_several_devices_follows_the_busiest_one():
    def done(gpu: str, run_s: float) -> JobResult:
        result = _result(_jobs(1, 1)[0])
        result.gpu, result.wall_s, result.stage_s = gpu, run_s + 1.0, {"solution_run": run_s, "build_wait": 0.5}
        return result

    results = [done("cuda:0 Fake GPU @ a", 8.0), done("cuda:1 Fake GPU @ a", 5.0), done("cuda:1 Fake GPU @ a", 5.0)]
    rates = throughput.summary(results, wall_s=13.0, build_summed_s=30.0, build_wall_s=20.0)
    assert rates["lanes"] == 2
    assert rates["critical_s"]["run"] == 10.0 and rates["critical_s"]["build"] == 1.0  # cuda:1, two jobs
    assert rates["summed_s"]["run"] == 18.0 and rates["summed_s"]["build"] == 30.0


def test_references_checked_before_the_first_job_count_as_reference_time_on_the_critical_path():
    from kbench.references import Prepared

    result = _result(_jobs(1, 1)[0])
    result.gpu, result.wall_s = "cuda:0 Fake GPU @ a", 4.0
    result.stage_s = {"reference": 0.001, "solution_run": 3.5}
    prepared = Prepared(count=5, wall_s=28.0, phase_s={"load": 12.0, "run": 40.0})
    rates = throughput.summary([result], wall_s=33.0, build_summed_s=0.0, build_wall_s=0.0, prepared=prepared)
    # The wall (33 s) is accounted for: the 28 s before the job and the job's own 4 s, most of it reference time.
    assert rates["critical_s"]["reference"] == pytest.approx(28.001) and rates["dominant"] == "reference"
    assert sum(rates["critical_s"].values()) == pytest.approx(32.0, abs=0.01)
    assert rates["summed_s"]["reference"] == pytest.approx(28.001)
    assert rates["reference_phases_summed_s"] == {"load": 12.0, "run": 40.0}
    assert rates["references_prepared"] == {"count": 5, "wall_s": 28.0}
    without = throughput.summary([result], wall_s=33.0, build_summed_s=0.0, build_wall_s=0.0)
    assert without["critical_s"]["reference"] == 0.001 and without["references_prepared"] is None


def test_gpus_on_the_cpu_is_a_usage_error_before_anything_runs(tmp_path: Path):
    from typer.testing import CliRunner

    from kbench.cli import app

    results = tmp_path / "results"
    args = ["bench", "affine_relu", "--problems-dir", str(PROBLEMS), "--solutions-dir", str(SOLUTIONS)]
    args += ["--device", "cpu", "--gpus", "0"]
    outcome = CliRunner(env={"COLUMNS": "200"}).invoke(app, [*args, "--results-dir", str(results)])
    assert outcome.exit_code == 2 and "--gpus is for --device cuda" in outcome.output, outcome.output
    assert not results.exists()  # bad input leaves no run behind


def test_throughput_counts_the_waits_for_judgements_made_beside_and_the_last_one():
    def judged_beside(wall_s: float, judge_wait: float) -> JobResult:
        result = _result(_jobs(1, 1)[0])
        result.gpu, result.wall_s = "cuda:0 Fake GPU @ a", wall_s
        result.stage_s = {"solution_run": 2.0, "judge": 3.0, "judge_wait": judge_wait}
        return result

    # Each judgement (3 s) ran beside the next job's run (2 s): the lane waited 1 s before handing over the
    # second, and 3 s at its end for the last.
    rates = throughput.summary([judged_beside(5.0, 0.0), judged_beside(6.0, 1.0)], 8.0, 0.0, 0.0)
    assert rates["critical_s"]["judge"] == 4.0 and rates["critical_s"]["run"] == 4.0
    assert rates["critical_s"]["queue"] == 0.0 and rates["summed_s"]["judge"] == 6.0


def test_judging_beside_leaves_the_lanes_workers_their_cores_and_restores_the_threads():
    import torch

    from kbench.session import _judging_threads

    before = torch.get_num_threads()
    with _judging_threads(cores=1, beside=True):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with _judging_threads(cores=1, beside=False):
        assert torch.get_num_threads() == before


@pytest.mark.slow
def test_real_jobs_judged_beside_the_next_keep_their_verdicts(tmp_path: Path, make_catalog):
    import json

    import yaml
    from typer.testing import CliRunner

    from kbench.cli import app

    problems_dir, solutions_dir = make_catalog("affine_relu", ["correct_torch", "wrong_values", "forward_raises"])
    config = tmp_path / "beside.yaml"  # on the CPU only when asked: there it shares the cores being timed
    config.write_text(yaml.safe_dump({**fast_config().model_dump(), "pipeline": {"judge_beside": "on"}}))
    args = ["bench", "--all", "--device", "cpu", "--problems-dir", str(problems_dir), "--solutions-dir"]
    args += [str(solutions_dir), "--config", str(config), "--results-dir", str(tmp_path / "results"), "--json"]
    outcome = CliRunner(env={"COLUMNS": "200"}).invoke(app, args)
    run = json.loads(outcome.stdout)
    verdicts = {result["solution"]: result["verdict"] for result in run["results"]}
    assert verdicts == {"correct_torch": "correct", "wrong_values": "incorrect", "forward_raises": "runtime_error"}
    assert all("judge_wait" in result["stage_s"] for result in run["results"]), run["results"]
    assert outcome.exit_code == 1  # two solutions fail
    # The correct one's run, step by step (no kernel census on the CPU): within its worker's run phase.
    (correct,) = [result for result in run["results"] if result["verdict"] == "correct"]
    steps = correct["run_steps_s"]
    assert set(steps) == {"weights", "trials", "turns", "perturbed"}, steps
    assert all(seconds >= 0 for seconds in steps.values())
    assert sum(steps.values()) <= correct["stage_s"]["solution_run"]
    assert set(run["throughput"]["run_steps_summed_s"]) == set(steps)
    # The job that ran the problem's reference, if one did (with its timings cached, it ran before the jobs), says
    # where that time went: its worker's phases, within the job's reference stage.
    ran_reference = [result["stage_s"] for result in run["results"] if "reference_run" in result["stage_s"]]
    assert len(ran_reference) <= 1
    reference_steps = {"weights", "trials", "timing", "perturbed"}  # its run phase's, step by step
    for stages in ran_reference:
        assert 0 < stages["reference_load"] + stages["reference_run"] <= stages["reference"], stages
        assert {key.removeprefix("reference_step_") for key in stages if "_step_" in key} == reference_steps
        assert sum(stages[f"reference_step_{step}"] for step in reference_steps) <= stages["reference_run"]
    summed_steps = set(run["throughput"]["reference_steps_summed_s"])
    assert summed_steps == (reference_steps if ran_reference else set()), summed_steps
    # Else it ran before them, checked side by side, and the run's throughput counts it there.
    phases, prepared = run["throughput"]["reference_phases_summed_s"], run["throughput"]["references_prepared"]
    assert set(phases) == {"load", "run"}, phases
    if not ran_reference:
        assert prepared["count"] == 1 and 0 < prepared["wall_s"] <= run["throughput"]["critical_s"]["reference"]
