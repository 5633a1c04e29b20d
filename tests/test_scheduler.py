"""The scheduler over several devices (issue #18), with fake devices and fake runners: never two jobs on one
device at once, every device busy, a job waits for its own build only, and a recording error stops the run
without losing what was recorded."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import PROBLEMS, SOLUTIONS

from kbench import throughput
from kbench.catalog import Problem, Solution, read_problem
from kbench.devices import CPU, Device, DeviceError, devices_for, select_gpus
from kbench.results import JobResult, Verdict
from kbench.runner import Job
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
    """Times nothing: sleeps, and writes down which device ran what, and when."""

    def __init__(self, device: Device, log: list[tuple[str, str, float, float]], lock: threading.Lock) -> None:
        self.device, self.log, self.lock = device, log, lock

    def run(self, job: Job, next_job: Job | None = None) -> JobResult:
        began = time.monotonic()
        time.sleep(0.02)
        with self.lock:
            self.log.append((self.device.label, f"{job.problem.name}/{job.solution.name}", began, time.monotonic()))
        return _result(job)


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


def test_a_recording_error_stops_every_lane_and_keeps_what_was_recorded():
    recorded: list[JobResult] = []

    def record(result: JobResult) -> None:
        if len(recorded) == 4:
            raise OSError("No space left on device")
        recorded.append(result)

    log: list = []
    with pytest.raises(OSError, match="No space"):
        _scheduler(GPUS, log, on_result=record).run(_jobs(problems=10, solutions=3))
    assert len(recorded) == 4
    assert len(log) < 30  # the lanes stopped: no new chunk was taken after the error


def test_progress_says_built_running_judged_left_and_a_rate():
    progress = Progress(10, builds_done=lambda: 4, builds_total=7, running=2, judged=3)
    line = progress.line()
    assert line.startswith("built 4/7 · running 2 · judged 3/10 · left 5 · ") and line.endswith(" jobs/h"), line


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


def test_gpus_on_the_cpu_is_a_usage_error_before_anything_runs(tmp_path: Path):
    from typer.testing import CliRunner

    from kbench.cli import app

    results = tmp_path / "results"
    args = ["bench", "affine_relu", "--problems-dir", str(PROBLEMS), "--solutions-dir", str(SOLUTIONS)]
    args += ["--device", "cpu", "--gpus", "0"]
    outcome = CliRunner(env={"COLUMNS": "200"}).invoke(app, [*args, "--results-dir", str(results)])
    assert outcome.exit_code == 2 and "--gpus is for --device cuda" in outcome.output, outcome.output
    assert not results.exists()  # bad input leaves no run behind
