"""Run a bench session over a Ray cluster: one Ray task per job (issue #18).

Each task runs its one job on a node through kbench's own path (``session.execute``), so the job's isolated
workers, its build and the node's build cache are exactly as in a local run. The driver ships each job as data
(the problem's and solution's file bytes and names, the sizes, the configuration), since a node need not share
the driver's filesystem, and it records every result into the one run directory as the task that made it
finishes.

A job whose task is lost (its node died, its Ray worker was killed, or the node could not run kbench at all)
is reported as lost and not recorded: the job has no verdict, and ``kbench bench --resume`` runs it again.

Every node needs kbench installed (the same commit as the driver: a node whose kbench source differs is
named in a warning) with its dependencies. Ray is an optional extra (``pip install -e '.[ray]'``); it is imported
only inside these functions, so kbench without it works as before.
"""

from __future__ import annotations

import socket
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kbench import catalog, devices, metadata, session, throughput
from kbench.config import KbenchConfig
from kbench.device_kind import on_gpu
from kbench.results import JobResult, Verdict
from kbench.runner import Job
from kbench.spec import file_digest

RAY_MISSING = "Ray is not installed: pip install -e '.[ray]'"
# CPU jobs each take one unit of this custom resource, and a node offers one unit (`ray start --resources`), so
# a node times one CPU job at a time: two timed jobs on the same cores would slow each other. A Ray CPU count
# cannot say this on a cluster of unequal nodes (all of the smallest node's CPUs is a fraction of a larger
# node's, which would then run several jobs at once), and a custom resource also lets a node opt out (offer 0)
# or, with cores to spare for two jobs that must not meet, opt in to more.
CPU_RESOURCE = "kbench_cpu"
POLL_S = 5.0  # how often the driver looks for nodes that joined (or left) while it waits for a result
DETAIL_CHARS = 20_000


class RayClusterError(Exception):
    """Ray is missing, no cluster answers at the address, or the cluster cannot run this session's jobs."""


@dataclass(frozen=True)
class LostJob:
    """A job (or a reference-only check, with ``solution`` empty) whose Ray task ended without a result."""

    problem: str
    solution: str
    reason: str


@dataclass
class RayOutcome(session.SessionOutcome):
    """A session's outcome (as ``session.execute`` returns it) with what only a cluster run has."""

    lost: list[LostJob] = field(default_factory=list)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # host -> tasks it answered, its kbench digest
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Task:
    """One Ray task's work: a job, or a problem whose reference alone runs (``job`` None)."""

    problem: catalog.Problem
    overrides: dict[str, Any]
    job: Job | None = None


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayClusterError(RAY_MISSING) from None
    return ray


def connect(address: str) -> bool:
    """Join the cluster at ``address``: ``auto`` finds a running one (``ray start --head`` on this host or
    ``RAY_ADDRESS``) and fails where there is none, rather than quietly running on this machine alone; ``local``
    starts a one-node cluster in this process; anything else is a cluster address (``HOST:6379``,
    ``ray://HOST:10001``). A process already connected keeps its connection. True when this call connected
    (the caller then disconnects)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    # The nodes' task output is not forwarded: it would land in the middle of `--json` output on stdout. A
    # failed job's text comes back in its result; Ray's own logs stay on each node (/tmp/ray/session_latest).
    try:
        if address == "local":
            ray.init(address="local", resources={CPU_RESOURCE: 1}, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except ConnectionError as exc:
        raise RayClusterError(
            f"no Ray cluster at '{address}' ({exc}): start one with `ray start --head`, or pass --ray local"
        ) from None
    return True


def task_options(device: str) -> dict[str, Any]:
    """What one job's task asks Ray for. A CUDA job takes a whole GPU, so no two timed jobs share one (Ray
    points the task's CUDA_VISIBLE_DEVICES at it, and kbench's workers inherit that); a CPU job takes its node's
    one ``kbench_cpu`` (see CPU_RESOURCE)."""
    if on_gpu(device):
        return {"num_gpus": 1}
    return {"num_cpus": 1, "resources": {CPU_RESOURCE: 1}}


def slots(device: str) -> int:
    """How many of this session's jobs the live nodes can run at once now."""
    key = "GPU" if on_gpu(device) else CPU_RESOURCE
    return int(import_ray().cluster_resources().get(key, 0))


def check_capacity(device: str, address: str) -> None:
    """Refuse a cluster that could never start a job, which Ray would otherwise wait on for ever."""
    if slots(device) > 0:
        return
    if on_gpu(device):
        raise RayClusterError(f"the Ray cluster at '{address}' has no GPU for --device cuda")
    raise RayClusterError(
        f"no node of the Ray cluster at '{address}' offers the '{CPU_RESOURCE}' resource CPU jobs take (one per "
        f"node, so no two timed jobs share a node's cores): start each node with "
        f"`ray start ... --resources='{{\"{CPU_RESOURCE}\": 1}}'`"
    )


def payload(task: _Task, config: KbenchConfig, device: str) -> dict[str, Any]:
    """A task's work as plain data: file bytes rather than paths, which the node may not have."""
    problem = {"name": task.problem.name, "file": task.problem.path.name, "data": _read(task.problem.path)}
    solution = None
    if task.job is not None:
        path = task.job.solution.path
        solution = {"name": task.job.solution.name, "file": path.name, "data": _read(path)}
    return {
        "problem": problem,
        "solution": solution,
        "overrides": task.overrides,
        "config": config.model_dump(mode="json"),
        "device": device,
    }


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise catalog.CatalogError(f"{path}: cannot read: {exc.strerror}") from None


def run_payload(work: dict[str, Any]) -> dict[str, Any]:
    """The node's side of one task: write the files into a scratch folder, run the one job (or reference) as
    a local session would, and answer with plain data. Any kbench failure comes back as ``error``, so the
    driver records it instead of losing the job; only the task's own death (its node, its Ray worker) loses it."""
    host = socket.gethostname()
    try:
        with tempfile.TemporaryDirectory(prefix="kbench-ray-") as scratch:
            plan = _plan_on_node(work, Path(scratch))
            config = KbenchConfig.model_validate(work["config"])
            outcome = session.execute(plan, config, work["device"], devices=_task_gpu(work["device"]))
        return {
            "host": host,
            "source_digest": metadata.source_digest(),
            "results": [result.to_dict() for result in outcome.results],
            "references": [vars(check) for check in outcome.references],
            "device_info": outcome.device_info,
            "throughput": outcome.throughput,
        }
    except Exception:
        return {"host": host, "error": traceback.format_exc()[-DETAIL_CHARS:]}


def _task_gpu(device: str) -> list[devices.Device] | None:
    """The GPU Ray gave this task, as kbench names it (NVML's index and UUID, so the job's workers and its
    device monitor use that GPU and not the node's first): the one CUDA_VISIBLE_DEVICES, set by Ray, lets
    through. None on the CPU."""
    return devices.devices_for("cuda")[:1] if on_gpu(device) else None


def _plan_on_node(work: dict[str, Any], scratch: Path) -> session.SessionPlan:
    def write(part: dict[str, Any], folder: str) -> Path:
        path = scratch / folder / part["file"]  # a folder each: the two files may share a name
        path.parent.mkdir()
        path.write_bytes(part["data"])
        return path

    problem = catalog.read_problem(write(work["problem"], "problem"), work["problem"]["name"])
    if work["solution"] is None:
        return session.SessionPlan([], [(problem, work["overrides"])])
    solution = catalog.read_solution(write(work["solution"], "solution"), work["solution"]["name"])
    return session.SessionPlan([Job(problem, solution, work["overrides"])])


@dataclass
class _Collected:
    """What the driver has gathered so far; every job result in it is already recorded."""

    results: list[JobResult] = field(default_factory=list)
    references: list[session.ReferenceCheck] = field(default_factory=list)
    lost: list[LostJob] = field(default_factory=list)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    device_info: dict[str, Any] = field(default_factory=dict)
    build_s: float = 0.0  # the nodes' build pools, summed


def execute_on_ray(
    session_plan: session.SessionPlan,
    config: KbenchConfig,
    device: str,
    address: str = "auto",
    recorder: session.Recorder | None = None,
    on_start: Callable[[Job], None] = lambda job: None,
    on_result: Callable[[JobResult], None] = lambda result: None,
    on_lost: Callable[[LostJob], None] = lambda lost: None,
) -> RayOutcome:
    """Run ``session_plan`` on the Ray cluster at ``address`` (see ``connect``), one task per job and one per
    problem whose reference alone runs. Each result is recorded and passed to ``on_result`` as its task ends;
    ``on_start`` is called as a job is handed to Ray, which happens only while a node has room for it, so it
    starts then. A lost task is passed to ``on_lost`` and left out of the run, for ``--resume``. A CUDA job runs
    as ``cuda`` on whichever GPU Ray gave its task."""
    device = "cuda" if on_gpu(device) else device
    began = time.monotonic()
    connected = connect(address)
    try:
        check_capacity(device, address)
        tasks = [_Task(job.problem, job.overrides, job) for job in session_plan.jobs]
        tasks += [_Task(problem, sizes) for problem, sizes in session_plan.reference_only]
        collected = _Collected()

        def finished(task: _Task, reply: dict[str, Any]) -> None:
            for result in _accept(task, reply, device, collected):
                if recorder is not None:
                    recorder.record(result)
                collected.results.append(result)
                on_result(result)

        def lost(task: _Task, reason: str) -> None:
            collected.lost.append(LostJob(task.problem.name, task.job.solution.name if task.job else "", reason))
            on_lost(collected.lost[-1])

        try:
            _drive(tasks, config, device, on_start, finished, lost)
        except KeyboardInterrupt:  # a stopped run still says how fast it went until then
            if recorder is not None:
                recorder.interrupted(_rates(collected, time.monotonic() - began))
            raise
    finally:
        if connected:
            import_ray().shutdown()
    return _conclude(collected, address, time.monotonic() - began, recorder)


def _drive(
    tasks: list[_Task],
    config: KbenchConfig,
    device: str,
    on_start: Callable[[Job], None],
    finished: Callable[[_Task, dict[str, Any]], None],
    lost: Callable[[_Task, str], None],
) -> None:
    """Hand tasks to Ray while the live nodes have room, and take each reply as it comes. Handing over only
    what can start keeps ``on_start`` true and lets nodes that join mid-run take work. If the driver is
    interrupted, the tasks in flight are cancelled: nobody would collect their results."""
    ray = import_ray()
    # No retries: a task retried after its node died would run its job a second time, and a timing job must
    # not run twice behind the driver's back (a lost job is rerun by --resume, in the open). A fresh Ray worker
    # per task: the trusted parent holds per-process state (a child subreaper, on CUDA a context).
    remote = ray.remote(max_calls=1, max_retries=0)(run_payload).options(**task_options(device))
    queue: deque[_Task] = deque(tasks)
    pending: dict[Any, _Task] = {}  # ObjectRef -> its task
    try:
        while queue or pending:
            capacity = slots(device)
            if capacity <= 0:
                # No live node can run a job: one handed over but not started would wait for ever (Ray keeps
                # an unschedulable task for a node that may join). Take what has come back; the rest is lost.
                _take(pending, finished, lost, wait_s=0.0, every=True)
                for task in [*pending.values(), *queue]:
                    lost(task, "not run: no node of the cluster that can run it is left")
                return
            while queue and len(pending) < capacity:
                task = queue.popleft()
                pending[remote.remote(payload(task, config, device))] = task
                if task.job is not None:
                    on_start(task.job)
            _take(pending, finished, lost, wait_s=POLL_S)
    finally:
        for ref in pending:
            with suppress(Exception):  # cleaning up after an interrupt must not hide it
                ray.cancel(ref, force=True)


def _take(
    pending: dict[Any, _Task],
    finished: Callable[[_Task, dict[str, Any]], None],
    lost: Callable[[_Task, str], None],
    wait_s: float,
    every: bool = False,
) -> None:
    """Take the replies that are in (one, waiting up to ``wait_s`` for it; or ``every`` one in now)."""
    if not pending:
        return
    ray = import_ray()
    ready, _ = ray.wait(list(pending), num_returns=len(pending) if every else 1, timeout=wait_s)
    for ref in ready:
        task = pending.pop(ref)
        try:
            reply = ray.get(ref)
        except ray.exceptions.RayError as exc:
            lost(task, lost_reason(exc))
        else:
            finished(task, reply)


def lost_reason(exc: Exception) -> str:
    """Why a task ended without a reply, from Ray's exception. A RayTaskError means the node could not even
    start kbench (not installed there, or an incompatible one), since kbench's own failures come back as
    replies; every other Ray error is the task's worker or node going away."""
    ray = import_ray()
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return f"the node could not run kbench ({type(cause).__name__}: {cause}); is the same kbench installed?"
    if isinstance(exc, ray.exceptions.NodeDiedError | ray.exceptions.LocalRayletDiedError):
        return f"its node died ({type(exc).__name__}: {first})"
    if isinstance(exc, ray.exceptions.WorkerCrashedError):
        return f"its Ray worker died mid-job (WorkerCrashedError: {first})"
    return f"lost ({type(exc).__name__}: {first})"


def _accept(task: _Task, reply: dict[str, Any], device: str, collected: _Collected) -> list[JobResult]:
    """A task's reply as the results to record; it notes the node and its facts in ``collected``."""
    host = str(reply.get("host", "?"))
    node = collected.nodes.setdefault(host, {"tasks": 0, "source_digest": reply.get("source_digest")})
    node["tasks"] += 1  # jobs and reference checks it answered
    if "error" in reply:
        return [_harness_crash(task.job, host, reply["error"], device)] if task.job else []
    collected.device_info = collected.device_info or dict(reply.get("device_info") or {})
    collected.build_s += float((reply.get("throughput") or {}).get("summed_s", {}).get("build", 0.0))
    known = {f.name for f in fields(session.ReferenceCheck)}  # a node's kbench may know more fields
    for check in reply.get("references", []):
        collected.references.append(session.ReferenceCheck(**{k: v for k, v in check.items() if k in known}))
    results = [JobResult.from_dict(data) for data in reply.get("results", [])]
    for result in results:  # the node's scratch paths mean nothing here: the files are the driver's
        result.problem_path = str(task.problem.path)
        if task.job is not None:
            result.solution_path = str(task.job.solution.path)
    return results


def _harness_crash(job: Job, host: str, detail: str, device: str) -> JobResult:
    """kbench itself failed on the node: a result that says so, rather than a job lost for ever."""
    last = detail.strip().splitlines()[-1] if detail.strip() else "no traceback"
    try:
        digest = file_digest(job.solution.path)
    except OSError:
        digest = ""
    return JobResult(
        problem=job.problem.name,
        solution=job.solution.name,
        verdict=Verdict.CRASH,
        reason=f"kbench failed on Ray node {host}: {last}",
        device=device,
        flags=["harness_error"],
        overrides=dict(job.overrides),
        problem_path=str(job.problem.path),
        solution_path=str(job.solution.path),
        solution_digest=digest,
        detail=detail,
    )


def _rates(collected: _Collected, wall_s: float) -> dict[str, Any]:
    # Jobs ran side by side: critical_s sums each job's stages and is not one path through the run, and the
    # builds happened inside the jobs' tasks (their pool's time summed on both sides).
    rates = throughput.summary(collected.results, wall_s, collected.build_s, collected.build_s)
    rates["ray"] = {"nodes": len(collected.nodes), "lost": len(collected.lost)}
    return rates


def _conclude(collected: _Collected, address: str, wall_s: float, recorder: session.Recorder | None) -> RayOutcome:
    """The outcome, and the run's metadata finished: which nodes ran what, what was lost."""
    here = metadata.source_digest()
    warnings = [
        f"node {host} runs different kbench code (source digest {facts['source_digest']}, here {here}): "
        "its results were judged and timed by that code"
        for host, facts in sorted(collected.nodes.items())
        if facts["source_digest"] not in (None, here)
    ]
    rates = _rates(collected, wall_s)
    outcome = RayOutcome(
        collected.results, collected.references, collected.device_info, rates,
        collected.lost, collected.nodes, warnings,
    )  # fmt: skip
    if recorder is not None:
        recorder.metadata["ray"] = {
            "address": address,
            "nodes": collected.nodes,
            "lost": [vars(job) for job in collected.lost],
            "warnings": warnings,
        }
        recorder.finish(outcome.device_info, outcome.references, rates)
    return outcome
