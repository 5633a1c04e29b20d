"""Untrusted workers confined with Landlock (kbench.sandbox, ``integrity.sandbox``): a solution writes only to its
job's folder and its build folder, and cannot reach the trusted processes through /proc or signals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROBLEMS, fast_config
from test_build_pool import GOOD

from kbench import build_pool
from kbench.catalog import read_problem, read_solution
from kbench.config import ConfigError, IntegrityConfig, KbenchConfig, Timeouts, confines_workers
from kbench.results import Verdict
from kbench.runner import Job, Runner
from kbench.sandbox import landlock_abi

needs_landlock = pytest.mark.skipif(landlock_abi() < 1, reason="this kernel has no Landlock")

# Run in a child of the test (its parent): confined, it tries what a solution would, and prints what got through.
_ATTEMPTS = """
import os, sys, threading
from pathlib import Path
from kbench import sandbox
allowed, outside = Path(sys.argv[1]), Path(sys.argv[2])
abi = sandbox.confine([allowed])
(allowed / "inside.txt").write_text("kept")
got = []
for name, attempt in [
    ("outside", lambda: outside.write_text("planted")),
    ("remove", lambda: os.unlink(sys.argv[3])),
    ("parent_pipe", lambda: os.close(os.open(f"/proc/{os.getppid()}/fd/{sys.argv[4]}", os.O_WRONLY))),
    ("signal", lambda: os.kill(os.getppid(), 0)),
    ("child", lambda: (os.system(f"echo planted > {outside}.child 2>/dev/null"), Path(f"{outside}.child").stat())),
    ("own_thread_name", _name_a_thread),
    ("parent_proc", lambda: os.close(os.open(f"/proc/{os.getppid()}/oom_score_adj", os.O_WRONLY))),
]:
    try:
        attempt()
        got.append(name)
    except OSError:
        pass
print(abi, " ".join(got) or "-")
"""
# What CUDA does when it names a thread it started, and its start fails where it cannot (error 304): glibc's
# pthread_setname_np for another thread opens the name O_RDWR, fopen(path, "w") opens it with O_TRUNC; then a
# write to the parent's /proc folder.
_PROC_WRITES = """
def _name_a_thread():
    named = threading.Event()
    thread = threading.Thread(target=named.wait)
    thread.start()
    try:
        comm = os.open(f"/proc/self/task/{thread.native_id}/comm", os.O_RDWR)
        os.write(comm, b"named")
        os.close(comm)
        with open(f"/proc/self/task/{thread.native_id}/comm", "w") as comm:
            comm.write("renamed")
    finally:
        named.set()
        thread.join()
"""


@needs_landlock
def test_a_confined_process_writes_only_beneath_its_folders_and_cannot_reach_its_parent(tmp_path: Path):
    allowed, outside, kept = tmp_path / "job", tmp_path / "planted.txt", tmp_path / "trusted.txt"
    kept.write_text("the trusted side's")
    # A pipe of the parent's, as its channels to workers are: only the ptrace scope keeps a child from reopening
    # it through /proc (Landlock's folder rules do not cover pipes).
    read_end, write_end = os.pipe()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    paths = [str(outside), str(kept), str(write_end)]
    done = subprocess.run(
        [sys.executable, "-c", _PROC_WRITES + _ATTEMPTS, str(allowed), *paths],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    abi, got = done.stdout.split(maxsplit=1)
    assert (allowed / "inside.txt").read_text() == "kept"
    assert not outside.exists() and not (tmp_path / "planted.txt.child").exists()
    assert kept.read_text() == "the trusted side's"
    expected_through = ["own_thread_name"] if int(abi) >= 6 else ["signal", "own_thread_name"]  # signals: ABI 6
    assert got.split() == expected_through, done.stdout
    # Unconfined, the same attempts get through: the check above can fail.
    unconfined = _ATTEMPTS.replace("abi = sandbox.confine([allowed])", "abi = 0; allowed.mkdir()")
    free = subprocess.run(
        [sys.executable, "-c", _PROC_WRITES + unconfined, str(tmp_path / "free"), *paths],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    os.close(read_end)
    os.close(write_end)
    all_through = ["outside", "remove", "parent_pipe", "signal", "child", "own_thread_name", "parent_proc"]
    assert free.stdout.split(maxsplit=1)[1].split() == all_through


def _config(setting: str) -> KbenchConfig:
    return fast_config().model_copy(update={"integrity": IntegrityConfig(sandbox=setting)})


def test_the_setting_decides_where_workers_are_confined(monkeypatch: pytest.MonkeyPatch):
    import kbench.sandbox

    monkeypatch.setattr(kbench.sandbox, "landlock_abi", lambda: 7)
    assert confines_workers(_config("auto")) and confines_workers(_config("on"))
    assert not confines_workers(_config("off"))
    monkeypatch.setattr(kbench.sandbox, "landlock_abi", lambda: 0)
    assert not confines_workers(_config("auto"))
    with pytest.raises(ConfigError, match="no Landlock"):
        confines_workers(_config("on"))


# A solution that plants a file outside its folders while it is imported (where a build compiles it) and again
# when its model is made, and gives wrong answers if either got through.
_PLANTER = """
import torch
import torch.nn as nn
from pathlib import Path

def _plant(name):
    try:
        Path({target!r}).with_name(name).write_text("planted")
        return True
    except OSError:
        return False

_escaped = _plant("at_import")


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.escaped = _plant("in_model") or _escaped

    def forward(self, x):
        out = torch.relu(self.linear(x))
        return out + 1 if self.escaped else out
"""


@pytest.mark.slow
@needs_landlock
def test_a_confined_solution_worker_cannot_plant_files_and_an_unconfined_one_can(tmp_path: Path):
    target = tmp_path / "trusted" / "planted"
    target.parent.mkdir()
    path = tmp_path / "planter.py"
    path.write_text(_PLANTER.format(target=str(target)))
    problem = read_problem(PROBLEMS / "affine_relu.py")
    with Runner(_config("on"), "cpu") as confined:
        kept = confined.run(Job(problem, read_solution(path)))
    assert kept.verdict == Verdict.CORRECT, kept.reason
    assert list(target.parent.iterdir()) == []
    with Runner(_config("off"), "cpu") as free:
        escaped = free.run(Job(problem, read_solution(path)))
    assert escaped.verdict == Verdict.INCORRECT, escaped.reason
    assert {p.name for p in target.parent.iterdir()} == {"at_import", "in_model"}


def _cpp_planter(target: Path) -> str:
    """A C++ solution (test_build_pool's) that plants a file as its build imports it."""
    plant = f"import pathlib\ntry:\n    pathlib.Path({str(target)!r}).write_text('x')\nexcept OSError:\n    pass\n"
    return plant + GOOD.format(tag="sandboxed")


@pytest.mark.slow
@needs_landlock
def test_a_confined_build_worker_compiles_in_its_build_folder_and_writes_nowhere_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("KBENCH_CACHE_DIR", str(tmp_path / "cache"))
    target = tmp_path / "planted"
    path = tmp_path / "cpp_planter.py"
    path.write_text(_cpp_planter(target))
    (outcome,) = build_pool.build_all([path], "cpu", Timeouts(), at_once=1, confined=True).outcomes.values()
    assert outcome.status == "built", outcome.reason + outcome.detail
    assert not target.exists()
    ext_dir = Path(outcome.ext_dir)
    assert any(ext_dir.rglob("*.so")) and not list(ext_dir.glob("tmp-*")), "its scratch folder is removed"


def test_a_sandbox_setting_other_than_auto_on_or_off_is_refused_before_anything_runs(tmp_path: Path):
    from typer.testing import CliRunner

    from kbench.cli import app

    args = ["bench", "affine_relu", "--problems-dir", str(PROBLEMS), "--device", "cpu"]
    config = tmp_path / "c.yaml"
    config.write_text("integrity: {sandbox: sideways}\n")
    outcome = CliRunner().invoke(app, [*args, "--config", str(config), "--results-dir", str(tmp_path / "r")])
    assert outcome.exit_code == 2 and "sandbox" in outcome.output, outcome.output
    assert not (tmp_path / "r").exists()
