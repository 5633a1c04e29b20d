"""Where a maintained library does the job (issue #19): the JSON store's lock (filelock), the cache folder
(platformdirs), process trees (psutil), and the one atomic write."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import platformdirs
import psutil
import pytest

from kbench import caches, process_tree
from kbench.isolation import WorkerCommand, run_workers
from kbench.runs import RunDir
from kbench.store import JsonStore, atomic_write_text

WRITERS = 4
PUTS_EACH = 25


@dataclasses.dataclass
class Entry:
    writer: int
    n: int


def _write_entries(path: str, writer: int) -> None:
    store = JsonStore(Path(path))
    for n in range(PUTS_EACH):
        store.put(f"{writer}-{n}", Entry(writer, n))


def test_concurrent_writers_lose_no_entry(tmp_path: Path):
    path = tmp_path / "cache" / "store.json"
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch's threads
    procs = [ctx.Process(target=_write_entries, args=(str(path), w)) for w in range(WRITERS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    store = JsonStore(path)
    assert set(store.entries()) == {f"{w}-{n}" for w in range(WRITERS) for n in range(PUTS_EACH)}
    assert store.get("3-24", Entry) == Entry(3, 24)
    assert sorted(p.name for p in path.parent.iterdir()) == ["store.json", "store.json.lock"]  # no temp files


def test_cache_root_honours_the_override(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("KBENCH_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert caches.default_cache_root() == tmp_path / "elsewhere"


def test_cache_root_defaults_to_platformdirs(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("KBENCH_CACHE_DIR", raising=False)
    assert caches.default_cache_root() == Path(platformdirs.user_cache_dir("kbench", appauthor=False))
    if sys.platform.startswith("linux"):  # the same folder as before platformdirs
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path))
        assert caches.default_cache_root() == tmp_path / ".cache" / "kbench"
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert caches.default_cache_root() == tmp_path / "xdg" / "kbench"


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path: Path):
    target = tmp_path / "sub" / "file.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_keeps_the_old_content_on_failure(tmp_path: Path, monkeypatch):
    target = tmp_path / "file.json"
    atomic_write_text(target, "old")
    with pytest.raises(UnicodeEncodeError):  # fails while writing
        atomic_write_text(target, "half \ud800")
    monkeypatch.setattr(os, "replace", lambda *_: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError, match="disk gone"):  # fails at the rename
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]


def test_run_metadata_goes_through_the_atomic_write(tmp_path: Path):
    run = RunDir(tmp_path)
    run.write_metadata({"a": 1})
    run.write_metadata({"a": 2})
    assert run.read_metadata() == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["metadata.json"]


def test_children_are_the_direct_children_only():
    # A child that starts a grandchild: only the child is ours.
    code = "import subprocess, sys, time; subprocess.Popen(['sleep', '30']); print('up', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "up"
        grandchildren = {p.pid for p in psutil.Process(child.pid).children()}
        assert grandchildren
        found = process_tree.children()
        assert child.pid in found and not (grandchildren & found)
    finally:
        for proc in psutil.Process(child.pid).children(recursive=True):
            proc.kill()
        child.kill()
        child.wait()


# A worker that double-forks a ``sleep`` into a new session (setsid), reports the sleep's pid and exits: the
# sleep has left the worker's process group, and only the subreaper's orphan killing can end it.
DOUBLE_FORK = """
import json, os, sys, time
fd = int(sys.argv[-1])
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    pid = os.fork()
    if pid == 0:
        os.execvp("sleep", ["sleep", "60"])
    os.write(w, str(pid).encode())
    os._exit(0)
os.close(w)
sleeper = int(os.read(r, 32))
os.write(fd, (json.dumps({"result": {"pid": sleeper}}) + "\\n").encode())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="subreaper and orphan killing are Linux only")
def test_a_double_forked_setsid_sleep_is_killed(tmp_path: Path):
    (tmp_path / "double_fork_worker.py").write_text(DOUBLE_FORK)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    command = WorkerCommand("double_fork_worker", [], tmp_path / "w.log", {"run": 30.0}, env=env)
    started = time.monotonic()
    (run,) = run_workers([command])
    assert time.monotonic() - started < 20
    assert run.returncode == 0, run.log_tail
    sleeper = run.last("result")["result"]["pid"]
    assert run.orphans_killed >= 1
    assert not psutil.pid_exists(sleeper) or psutil.Process(sleeper).status() == psutil.STATUS_ZOMBIE
    assert sleeper not in process_tree.children()  # killed and reaped, not left a zombie


def test_a_store_entry_survives_a_reader_during_writes(tmp_path: Path):
    """Reads take no lock; the atomic replace means a reader sees a whole file each time."""
    path = tmp_path / "store.json"
    ctx = multiprocessing.get_context("spawn")
    writer = ctx.Process(target=_write_entries, args=(str(path), 0))
    writer.start()
    while writer.is_alive():
        if path.exists():
            json.loads(path.read_text())  # never torn
    writer.join()
    assert writer.exitcode == 0 and len(JsonStore(path).entries()) == PUTS_EACH
