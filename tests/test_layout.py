"""The trusted side never imports the untrusted package: code that runs beside a solution stays apart from the
code that judges it."""

from __future__ import annotations

import ast
from pathlib import Path

import kbench

PACKAGE = Path(kbench.__file__).parent
UNTRUSTED = PACKAGE / "untrusted"


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _trusted_files() -> list[Path]:
    return [
        path
        for path in PACKAGE.rglob("*.py")
        if UNTRUSTED not in path.parents and PACKAGE / "solutions" not in path.parents
    ]


def test_no_trusted_module_imports_the_untrusted_package():
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(m for m in _imported_modules(path) if m.startswith("kbench.untrusted"))
        for path in _trusted_files()
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_the_layout_check_sees_an_import_of_the_untrusted_package(tmp_path: Path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("from kbench.untrusted import guards\nimport kbench.untrusted.worker\n")
    assert {"kbench.untrusted", "kbench.untrusted.guards", "kbench.untrusted.worker"} <= _imported_modules(sneaky)


def test_the_untrusted_worker_lives_in_its_own_package():
    assert (UNTRUSTED / "worker.py").is_file() and (UNTRUSTED / "guards.py").is_file()
    assert not (PACKAGE / "solution_worker.py").exists() and not (PACKAGE / "integrity.py").exists()
