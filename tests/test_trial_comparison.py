"""The trials compared in the trusted partner (kbench.trial_comparison), on the CPU here: the partner reads the
solution's trial files and compares them with the parent's rules; the parent uses that only for the very files the
solution's worker announced, unchanged since, and compares the files itself otherwise."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import PROBLEMS, fast_config, run_fixture

from kbench import tensor_files
from kbench.catalog import read_problem
from kbench.compare import exact_record
from kbench.config import KbenchConfig
from kbench.execution import pack_outputs
from kbench.partner import Partner
from kbench.results import Verdict
from kbench.runner import Runner
from kbench.spec import TRIAL, WorkerSpec, bytes_digest, output_path
from kbench.timed_comparison import judging_settings
from kbench.trial_comparison import judge_trial_files, read_trial_judgement

TRIALS = 3


def _reference(seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trial's fp32 record and its float64 evaluation's."""
    x = torch.randn(128, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    exact = torch.tanh(x)
    fp32 = pack_outputs(exact.float())
    return fp32, exact_record(pack_outputs(exact), fp32, narrow=False)


REFERENCES = [_reference(seed) for seed in range(TRIALS)]


def _solution_files(folder: Path, wrong: int | None = None) -> dict[str, tuple[str, int]]:
    """The solution worker's trial files, as it writes them, and its announcements."""
    announced = {}
    for index, (fp32, _) in enumerate(REFERENCES):
        answer = fp32["tensors"][0].clone()
        if index == wrong:
            answer[3, 4] += 0.5
        content = b"".join(bytes(p) for p in tensor_files.encode({"structure": "tensor", "tensors": [answer]}))
        path = output_path(folder, "new", TRIAL, index)
        path.write_bytes(content)
        announced[path.name] = (bytes_digest(content), len(content))
    return announced


def _judged(folder: Path) -> dict[str, Any]:
    spec = WorkerSpec(str(folder / "p.py"), "cpu", 0, TRIALS, {}, str(folder), audit_float64=True, judging=_settings())
    message = judge_trial_files(spec, [r for r, _ in REFERENCES], [e for _, e in REFERENCES])
    return json.loads(json.dumps(message))  # as the channel carries it


def _settings() -> dict[str, Any]:
    return judging_settings(KbenchConfig())


def test_honest_trials_pass_and_a_wrong_one_fails_as_the_files_comparison_names_it(tmp_path: Path):
    announced = _solution_files(tmp_path)
    comparison, new_error, notes = read_trial_judgement(_judged(tmp_path), tmp_path, announced, TRIALS) or (None,) * 3
    assert comparison is not None and comparison.ok and comparison.reason == "within tolerance (float64 rule)"
    assert new_error is not None and new_error < 1e-6 and notes == []

    announced = _solution_files(tmp_path, wrong=1)
    comparison, _, _ = read_trial_judgement(_judged(tmp_path), tmp_path, announced, TRIALS) or (None,) * 3
    assert comparison is not None and not comparison.ok
    assert comparison.reason.startswith("trial 1: 1 of 4096 elements outside"), comparison.reason


def test_a_file_not_as_announced_or_changed_after_the_partner_read_it_leaves_the_files_to_decide(tmp_path: Path):
    announced = _solution_files(tmp_path)
    message = _judged(tmp_path)
    assert read_trial_judgement(message, tmp_path, announced, TRIALS) is not None
    # Another digest announced than the partner read: the parent reads the files (and finds which one).
    forged = {**announced, "new_trial2.kbt": ("0" * 64, announced["new_trial2.kbt"][1])}
    assert read_trial_judgement(message, tmp_path, forged, TRIALS) is None
    # The same bytes written again after the partner read them: the file changed (its ctime), the files decide.
    path = output_path(tmp_path, "new", TRIAL, 0)
    path.write_bytes(path.read_bytes())
    assert read_trial_judgement(message, tmp_path, announced, TRIALS) is None
    # Fewer trials than the parent holds: the files decide.
    assert read_trial_judgement(_judged(tmp_path), tmp_path, announced, TRIALS + 1) is None


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_the_partner_reads_no_link_and_waits_on_no_fifo(tmp_path: Path, kind: str):
    announced = _solution_files(tmp_path)
    path = output_path(tmp_path, "new", TRIAL, 1)
    path.rename(tmp_path / "elsewhere.kbt")
    if kind == "symlink":
        path.symlink_to(tmp_path / "elsewhere.kbt")
    else:
        os.mkfifo(path)
    message = _judged(tmp_path)  # returns: a FIFO with no writer would have held it
    assert message["files"]["new_trial1.kbt"] is None
    assert read_trial_judgement(message, tmp_path, announced, TRIALS) is None


@pytest.mark.parametrize(
    "message",
    [
        None,
        {"notes": [], "ok": True, "reason": "r"},  # no files
        {"files": [], "notes": [], "ok": True, "reason": "r"},
        {"files": {}, "notes": [], "ok": True, "reason": "r", "new_error_fp64": "0"},
        {"files": {}, "notes": [], "ok": 1, "reason": "r"},
    ],
)
def test_a_message_that_is_not_a_comparison_is_refused(message: Any, tmp_path: Path):
    with pytest.raises(ValueError):
        read_trial_judgement(message, tmp_path, {}, TRIALS)


@pytest.mark.parametrize(("fixture", "ok"), [("correct_torch", True), ("wrong_values", False)])
def test_a_cpu_job_has_its_trials_judged_by_the_partner(monkeypatch: pytest.MonkeyPatch, fixture: str, ok: bool):
    """End to end on the CPU: the partner makes the reference's trials, reads the solution's trial files and
    compares them; the parent judges by that comparison."""
    seen: list[bool] = []
    original = Partner.trial_judgement

    def spy(self: Partner, out_dir: Path, announced: dict[str, Any], count: int) -> Any:
        judged = original(self, out_dir, announced, count)
        if count:  # not the check of the message's form
            seen.append("files" if judged is None else judged[0].ok)
        return judged

    monkeypatch.setattr(Partner, "trial_judgement", spy)
    with Runner(fast_config(), "cpu") as runner:
        result = run_fixture(runner, read_problem(PROBLEMS / "affine_relu.py"), fixture)
    assert seen == [ok], seen
    if ok:
        assert result.verdict == Verdict.CORRECT and result.new_error_fp64 is not None, (result.reason, result.flags)
    else:
        assert result.verdict == Verdict.INCORRECT and result.reason.startswith("trial 0:"), result.reason
