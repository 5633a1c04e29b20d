"""The command line behaves like the tools around it: fast help, --version, python -m, exit codes that tell bad
input (2) from a failed verdict (1) and from kbench's own failure (3), and errors found before any worker runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROBLEMS, SOLUTIONS
from typer.testing import CliRunner

from kbench import __version__, caches, catalog, cli, run_progress, session
from kbench.cli import app
from kbench.config import IntegrityConfig, KbenchConfig

runner = CliRunner(env={"COLUMNS": "200"})
ENV = {**os.environ, "COLUMNS": "200"}
EXAMPLE = catalog.PROBLEMS_DIR / "example_scale_bias_relu6.py"


def invoke(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def kbench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kbench", *args], capture_output=True, text=True, env=env or ENV, timeout=60
    )


def fastest(args: list[str], tries: int = 3) -> float:
    """The best of a few wall times: the machine may be busy with other tests, and one slow start is noise."""
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        done = kbench(*args)
        best = min(best, time.perf_counter() - start)
        assert done.returncode == 0, done.stderr
    return best


@pytest.mark.parametrize("args", [["--help"], ["list"], ["--version"]])
def test_help_list_and_version_answer_in_under_a_second(args: list[str]):
    assert fastest(args) < 1.0


@pytest.mark.parametrize("args", [["--help"], ["list"], ["cache"]])
def test_light_commands_never_import_torch(args: list[str], tmp_path: Path):
    # Sets a trap: if torch (or pandas) were imported, the interpreter's module table would show it at exit.
    code = (
        "import sys, atexit\n"
        "atexit.register(lambda: print('HEAVY', sorted(m for m in ('torch', 'pandas') if m in sys.modules), "
        "file=sys.stderr))\n"
        f"sys.argv = ['kbench', *{args!r}]\n"
        "from kbench.launch import main\nmain()\n"
    )
    env = {**ENV, "KBENCH_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stderr


def test_version_and_python_dash_m():
    done = kbench("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"kbench {__version__}"
    done = kbench("list")
    assert done.returncode == 0 and "example_scale_bias_relu6" in done.stdout


def test_shell_completion_is_offered():
    code, out = invoke("--help")
    assert code == 0 and "--install-completion" in out and "--show-completion" in out


@pytest.mark.parametrize(
    "command", ["list", "verify", "bench", "lint", "calibrate", "report", "compare", "gate", "cache"]
)
def test_every_commands_help_ends_with_examples(command: str):
    code, out = invoke(command, "--help")
    assert code == 0
    tail = out[out.index("Examples:") :]
    lines = [line.strip() for line in tail.splitlines()[1:] if line.strip()]
    assert lines and all(line.startswith("kbench ") for line in lines), tail  # one example a line, and last


def test_root_help_documents_the_exit_codes():
    code, out = invoke("--help")
    assert code == 0 and "3 kbench itself failed" in " ".join(out.split())


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("batch_size=abc", "batch_size is int in example_scale_bias_relu6.py"),
        ("batch_size=1.5", "not float"),
        ("batch_size=True", "not bool"),
    ],
)
def test_set_value_of_the_wrong_type_is_a_usage_error_before_torch_runs(value: str, message: str):
    start = time.perf_counter()
    code, out = invoke("verify", "example_scale_bias_relu6", "--set", value, "--device", "cpu")
    assert code == 2 and message in " ".join(out.split())
    assert "Traceback" not in out and time.perf_counter() - start < 5


def test_set_type_check_accepts_what_fits():
    problem = catalog.read_problem(EXAMPLE)
    catalog.check_overrides(problem, {"batch_size": 8})  # int for int: no error
    fake = catalog.Problem("p", EXAMPLE, constants={"eps": 1e-5, "shape": (3, 4), "name": "x"})
    catalog.check_overrides(fake, {"eps": 1, "shape": [5, 6], "name": "y"})  # int for float, list for tuple
    with pytest.raises(catalog.CatalogError, match="name is str"):
        catalog.check_overrides(fake, {"name": 3})


def test_bench_set_of_the_wrong_type_leaves_no_run_directory(tmp_path: Path):
    code, out = invoke("bench", "--all", "--set", "batch_size=abc", "--results-dir", tmp_path / "res")
    assert code == 2 and "batch_size is int" in " ".join(out.split())
    assert not (tmp_path / "res").exists()


def test_bench_with_nothing_to_run_is_exit_2_and_leaves_no_run(tmp_path: Path):
    empty = tmp_path / "no_solutions"
    empty.mkdir()
    code, out = invoke("bench", "--all", "--device", "cpu", "--solutions-dir", empty, "--results-dir", tmp_path / "res")
    assert code == 2 and "nothing to run" in out
    assert not (tmp_path / "res").exists()


def test_solution_without_model_new_is_reported_at_once(tmp_path: Path):
    solution = tmp_path / "no_model_new.py"
    solution.write_text("import torch\n\nclass Model(torch.nn.Module):\n    pass\n")
    start = time.perf_counter()
    code, out = invoke("verify", PROBLEMS / "affine_relu.py", "-s", solution, "--device", "cpu")
    assert code == 2 and "defines no ModelNew" in " ".join(out.split())
    assert time.perf_counter() - start < 5  # no worker was started


@pytest.mark.parametrize(
    "source",
    [
        "class ModelNew:\n    pass\n",
        "from torch.nn import Linear as ModelNew\n",
        "ModelNew = object\n",
        "try:\n    import x\nexcept ImportError:\n    class ModelNew:\n        pass\n",
        "from helpers import *\n",
        "def broken(:\n",  # left to the worker: its load_error shows the syntax error
    ],
)
def test_model_new_check_accepts_every_way_of_defining_it(source: str, tmp_path: Path):
    path = tmp_path / "solution.py"
    path.write_text(source)
    catalog.check_defines_model_new(path)


def test_model_new_inside_a_function_does_not_count(tmp_path: Path):
    path = tmp_path / "solution.py"
    path.write_text("def make():\n    class ModelNew:\n        pass\n    return ModelNew\n")
    with pytest.raises(catalog.CatalogError, match="defines no ModelNew"):
        catalog.check_defines_model_new(path)


def test_problems_dir_finds_problems_in_subfolders(tmp_path: Path):
    (tmp_path / "level1" / "_private").mkdir(parents=True)
    (tmp_path / "level1" / "example.py").write_text(EXAMPLE.read_text())
    (tmp_path / "level1" / "_private" / "helper.py").write_text("x = 1\n")  # underscore folders are skipped
    code, out = invoke("list", "--problems-dir", tmp_path, "--json")
    assert code == 0 and [p["problem"] for p in json.loads(out)] == ["example"]
    registry = catalog.Catalog(tmp_path)
    assert registry.resolve_problem("example").path == (tmp_path / "level1" / "example.py").resolve()


@pytest.mark.parametrize("folder", ["empty", "missing"])
def test_an_empty_or_missing_problems_dir_is_an_error(folder: str, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    code, out = invoke("list", "--problems-dir", tmp_path / folder)
    assert code == 2 and ("no problem files" in out or "not found" in out)


def test_two_problems_of_one_name_in_subfolders_is_an_error(tmp_path: Path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "same.py").write_text(EXAMPLE.read_text())
    code, out = invoke("list", "--problems-dir", tmp_path)
    assert code == 2 and "two problems named 'same'" in out


def test_the_plan_says_what_runs_and_at_which_size_before_it_starts():
    registry = catalog.Catalog()
    full = catalog.read_problem(PROBLEMS / "affine_relu.py")  # declares no small sizes
    small = catalog.read_problem(EXAMPLE)
    planned = session.plan([full, small], "cpu", {}, registry, [SOLUTIONS / "affine_relu" / "correct_torch.py"])
    lines = run_progress.describe_plan(planned, "cpu")
    assert lines[0] == "2 job(s) on cpu:"
    assert "affine_relu / correct_torch at the file's own sizes (full size" in lines[1]
    assert "example_scale_bias_relu6 / correct_torch at batch_size=512, features=1024" in lines[2]
    assert "full size" not in lines[2]


def test_an_unexpected_failure_of_kbench_exits_3_not_1(monkeypatch: pytest.MonkeyPatch, capsys):
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the parent crashed")

    monkeypatch.setattr(session, "execute", explode)
    solution = SOLUTIONS / "affine_relu" / "correct_torch.py"
    with pytest.raises(SystemExit) as exited:
        cli.main(["verify", str(PROBLEMS / "affine_relu.py"), "-s", str(solution), "--device", "cpu"])
    assert exited.value.code == cli.EXIT_INTERNAL == 3
    err = capsys.readouterr().err
    assert "kbench failed" in err and "RuntimeError: the parent crashed" in err and "not a verdict" in err


def test_cache_shows_and_clears_what_it_holds(tmp_path: Path):
    build = tmp_path / "extensions" / "abc123"
    build.mkdir(parents=True)
    (build / "ext.so").write_bytes(b"x" * 2048)
    (tmp_path / "baselines.json").write_text("{}")
    env = {**ENV, "KBENCH_CACHE_DIR": str(tmp_path)}
    done = kbench("cache", "--json", env=env)
    assert done.returncode == 0, done.stderr
    held = {c["kind"]: c for c in json.loads(done.stdout)["caches"]}
    assert held["builds"]["items"] == 1 and held["builds"]["size_bytes"] == 2048
    assert held["baselines"]["items"] == 1 and held["calibration"]["items"] == 0
    assert held["builds"]["newest"] is not None and held["calibration"]["newest"] is None
    done = kbench("cache", "--clear", "builds", env=env)
    assert done.returncode == 0 and "removed" in done.stderr
    assert not (tmp_path / "extensions").exists() and (tmp_path / "baselines.json").exists()
    done = kbench("cache", "--clear", "all", env=env)
    assert done.returncode == 0 and not (tmp_path / "baselines.json").exists()
    assert [e.items for e in caches.inventory(tmp_path)] == [0, 0, 0, 0]


def test_cache_clear_of_an_unknown_kind_is_a_usage_error(tmp_path: Path):
    done = kbench("cache", "--clear", "everything", env={**ENV, "KBENCH_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 2 and "--clear takes" in done.stderr


def test_the_run_says_whether_its_workers_are_confined(monkeypatch: pytest.MonkeyPatch):
    import kbench.sandbox

    monkeypatch.setattr(kbench.sandbox, "landlock_abi", lambda: 7)
    confined = KbenchConfig().model_copy(update={"integrity": IntegrityConfig(sandbox="auto")})
    assert run_progress.confinement(confined).startswith("workers confined with Landlock")
    free = KbenchConfig().model_copy(update={"integrity": IntegrityConfig(sandbox="off")})
    assert run_progress.confinement(free).startswith("workers not confined (integrity.sandbox: off)")
