"""`kbench bench --ray`: jobs as Ray tasks on a real local Ray cluster (kbench.ray_cluster).

The clusters offer one ``kbench_cpu``, as `ray start --resources` would, so their CPU jobs run one at a time: one
node with 2 CPUs, or a head that runs no job beside a node that is taken away mid-job. The whole file skips
where Ray is not installed (it is the optional extra ``ray``).
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from conftest import PROBLEMS, SOLUTIONS, fast_config, unconfined  # noqa: E402

from kbench import catalog, ray_cluster, session  # noqa: E402
from kbench.results import Verdict  # noqa: E402
from kbench.runs import new_run  # noqa: E402

CORRECT = (SOLUTIONS / "affine_relu" / "correct_torch.py").read_text()
WRONG = (SOLUTIONS / "affine_relu" / "wrong_values.py").read_text()
# Kills the process that started its worker, kbench's trusted parent: on Ray that is the task's Ray worker, so
# Ray reports the task lost (WorkerCrashedError), as when the worker is killed under a running job.
KILLS_ITS_RAY_WORKER = """\
import os
import signal

os.kill(os.getppid(), signal.SIGKILL)

import torch.nn as nn


class ModelNew(nn.Module):
    pass
"""


@pytest.fixture
def one_node(kbench_cache: Path) -> Iterator[None]:
    """A one-node Ray cluster, as `ray start --head --resources='{"kbench_cpu": 1}'` makes; its workers inherit
    the session's KBENCH_CACHE_DIR. Each test starts its own: two Ray clusters cannot share this process."""
    ray.init(num_cpus=2, resources={ray_cluster.CPU_RESOURCE: 1}, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def two_nodes(kbench_cache: Path) -> Iterator[tuple[Any, Any]]:
    """A head that runs no kbench job and one node that does, as two `ray start`s make: the second node can be
    taken away (its raylet and its workers killed) as a host that dies would be."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    node = cluster.add_node(num_cpus=1, resources={ray_cluster.CPU_RESOURCE: 1})
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster, node
    ray.shutdown()
    cluster.shutdown()


def _catalog(root: Path, solutions: dict[str, str | None] | None = None) -> catalog.Catalog:
    """affine_relu with the given solutions (name -> text, or None for the correct one), and scaled_copy with
    none; by default a correct, a lost and an incorrect solution, run in that order."""
    solutions = solutions or {"a_correct": None, "b_lost": KILLS_ITS_RAY_WORKER, "c_wrong": WRONG}
    problems, folder = root / "problems", root / "solutions" / "affine_relu"
    problems.mkdir(parents=True)
    folder.mkdir(parents=True)
    shutil.copy(PROBLEMS / "affine_relu.py", problems)
    shutil.copy(PROBLEMS / "scaled_copy.py", problems)  # no solution: its reference alone runs, as a task too
    for name, text in solutions.items():
        (folder / f"{name}.py").write_text(text if text is not None else CORRECT)
    return catalog.Catalog(problems, folder.parent)


def _hangs_after_touching(marker: Path) -> str:
    """A solution that marks the moment its forward is first called, then never returns from it."""
    hang = (SOLUTIONS / "affine_relu" / "hang.py").read_text()
    return hang.replace("        while True:", f"        open({str(marker)!r}, 'a').close()\n        while True:")


@pytest.mark.slow
def test_a_run_on_ray_records_verdicts_and_leaves_a_lost_job_to_resume(one_node: None, tmp_path: Path):
    registry = _catalog(tmp_path)
    problems = registry.list_problems()
    config = unconfined(fast_config())  # its fixtures mark their progress in files
    planned = session.plan(problems, "cpu", {}, registry)
    selection = session.Selection(
        [str(p.path) for p in problems], {}, str(registry.problems_dir), str(registry.solutions_dir)
    )
    run_dir = new_run(tmp_path / "results")
    recorder = session.Recorder(run_dir, "cpu", config, ["kbench", "bench", "--ray", "auto"], selection)
    started, seen, lost = [], [], []

    outcome = ray_cluster.execute_on_ray(
        planned, config, "cpu", "auto", recorder, started.append, seen.append, lost.append
    )

    verdicts = {r.solution: r.verdict for r in outcome.results}
    assert verdicts == {"a_correct": Verdict.CORRECT, "c_wrong": Verdict.INCORRECT}
    assert [r.solution for r in seen] == [r.solution for r in outcome.results]
    assert sorted(job.solution.name for job in started) == ["a_correct", "b_lost", "c_wrong"]
    assert (
        [(j.problem, j.solution) for j in lost]
        == [("affine_relu", "b_lost")]
        == [(j.problem, j.solution) for j in outcome.lost]
    )
    assert "Ray worker died" in lost[0].reason
    recorded = run_dir.results.read()
    assert {r.solution: r.verdict for r in recorded} == verdicts  # the lost job has no line
    # Paths name the driver's files, not the node's scratch copies.
    assert {r.solution_path for r in recorded} == {
        str(registry.solutions_dir / "affine_relu" / f"{name}.py") for name in ("a_correct", "c_wrong")
    }
    meta = run_dir.read_metadata()
    assert meta["finished_at"] and meta["ray"]["lost"][0]["solution"] == "b_lost"
    assert sum(node["tasks"] for node in meta["ray"]["nodes"].values()) == 3  # 2 jobs, 1 reference check
    assert meta["throughput"]["jobs"] == 2 and meta["throughput"]["ray"]["lost"] == 1
    assert outcome.warnings == []  # the node runs this very kbench
    [reference] = outcome.references
    assert reference.problem == "scaled_copy" and reference.error is None and reference.ref_ms > 0
    assert [check["problem"] for check in meta["reference_only"]] == ["scaled_copy"]

    remaining = session.plan_resume(run_dir)
    assert [(j.problem.name, j.solution.name) for j in remaining.plan.jobs] == [("affine_relu", "b_lost")]
    assert remaining.done == 2

    # The same cluster has no GPU: a CUDA run is refused before any task is handed to Ray.
    with pytest.raises(ray_cluster.RayClusterError, match="has no GPU"):
        ray_cluster.execute_on_ray(remaining.plan, config, "cuda", "auto")
    assert len(run_dir.results.read()) == 2


@pytest.mark.slow
def test_a_node_that_dies_mid_job_loses_only_unrecorded_jobs_that_resume_runs(
    two_nodes: tuple[Any, Any], tmp_path: Path
):
    cluster, node = two_nodes
    registry = _catalog(tmp_path, {"a_hangs": _hangs_after_touching(tmp_path / "in_forward"), "b_correct": None})
    problems = [registry.resolve_problem("affine_relu")]
    config = unconfined(fast_config(run_s=300.0))  # its fixtures mark their progress in files
    planned = session.plan(problems, "cpu", {}, registry)
    run_dir = new_run(tmp_path / "results")
    selection = session.Selection([str(problems[0].path)], {}, str(registry.problems_dir), str(registry.solutions_dir))
    recorder = session.Recorder(run_dir, "cpu", config, ["kbench", "bench", "--ray", "auto"], selection)

    def take_the_node_away_once_in_forward() -> None:
        deadline = time.monotonic() + 240
        while not (tmp_path / "in_forward").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        cluster.remove_node(node)

    killer = threading.Thread(target=take_the_node_away_once_in_forward, daemon=True)
    killer.start()
    outcome = ray_cluster.execute_on_ray(planned, config, "cpu", "auto", recorder)
    killer.join()

    assert (tmp_path / "in_forward").exists()  # the job was under way on the node when it died
    assert outcome.results == [] and run_dir.results.read() == []
    reasons = {job.solution: job.reason for job in outcome.lost}
    assert "died" in reasons["a_hangs"]  # in flight on the node
    assert reasons["b_correct"].startswith("not run: no node")  # no node with kbench_cpu was left
    remaining = session.plan_resume(run_dir)
    assert sorted(j.solution.name for j in remaining.plan.jobs) == ["a_hangs", "b_correct"]


def test_kbench_failing_on_the_node_is_a_crash_result_not_a_lost_job(tmp_path: Path):
    problem = catalog.read_problem(PROBLEMS / "affine_relu.py")
    solution = catalog.read_solution(SOLUTIONS / "affine_relu" / "correct_torch.py")
    task = ray_cluster._Task(problem, {}, ray_cluster.Job(problem, solution))
    work = ray_cluster.payload(task, fast_config(), "cpu")
    work["config"] = {"trials": "many"}  # kbench refuses it on the node, as any kbench failure there

    reply = ray_cluster.run_payload(work)  # the node's side, called here directly

    assert "ValidationError" in reply["error"]
    [result] = ray_cluster._accept(task, reply, "cpu", ray_cluster._Collected())
    assert result.verdict == Verdict.CRASH and "harness_error" in result.flags
    assert result.reason.startswith(f"kbench failed on Ray node {reply['host']}")
    assert result.solution_path == str(solution.path) and result.solution_digest


def test_without_ray_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed: importing it fails
    with pytest.raises(ray_cluster.RayClusterError, match=r"pip install -e '\.\[ray\]'"):
        ray_cluster.connect("local")


@pytest.mark.slow
def test_bench_ray_through_the_cli_records_the_run_and_says_how_to_resume_the_lost_job(one_node: None, tmp_path: Path):
    import json

    import yaml
    from typer.testing import CliRunner

    from kbench.cli import app

    registry = _catalog(tmp_path)
    config = tmp_path / "fast.yaml"
    config.write_text(yaml.safe_dump(unconfined(fast_config()).model_dump()))  # fixtures mark progress in files
    folders = ["--problems-dir", str(registry.problems_dir), "--solutions-dir", str(registry.solutions_dir)]
    results = tmp_path / "results"
    cli = CliRunner(env={"COLUMNS": "200"})

    refused = cli.invoke(app, ["bench", "--all", *folders, "--ray", "auto", "--results-dir", str(results)])
    assert refused.exit_code == 2 and "--ray needs --device cuda or cpu" in refused.output
    assert not results.exists()  # bad input leaves no run behind

    args = ["bench", "affine_relu", *folders, "--device", "cpu", "--ray", "auto", "--config", str(config)]
    outcome = cli.invoke(app, [*args, "--results-dir", str(results)])
    assert outcome.exit_code == 1, outcome.output  # one wrong, one lost
    (run_dir,) = results.iterdir()
    lines = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert {(r["solution"], r["verdict"]) for r in lines} == {("a_correct", "correct"), ("c_wrong", "incorrect")}
    output = " ".join(outcome.output.split())
    assert "lost: affine_relu / b_lost" in output
    assert f"kbench bench --resume {run_dir.name} --ray auto" in output
