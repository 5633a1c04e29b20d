"""The kept timed rounds compared in the trusted partner (kbench.timed_comparison), on the CPU here: the same rules
and messages as the parent's comparison of files, and a message the parent checks before it uses it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import PROBLEMS, fast_config, run_fixture

from kbench.catalog import read_problem
from kbench.compare import exact_record
from kbench.config import KbenchConfig
from kbench.execution import pack_outputs
from kbench.isolation import WorkerRun
from kbench.judge import _timed_check
from kbench.output_checks import KERNELBENCH_FALLBACK
from kbench.partner import Partner
from kbench.reference_partner import _judged_here, _save_rounds
from kbench.results import Verdict
from kbench.runner import Runner
from kbench.spec import WorkerSpec
from kbench.timed_comparison import compare_in_place, judging_settings, read_comparison
from kbench.turns import Interleaved

ROUNDS = [3, 5, 9]
SETTINGS = judging_settings(KbenchConfig())


def _outputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A round's fp32 output and its float64 evaluation."""
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    exact = torch.nn.functional.gelu(x)
    return exact.float(), exact


OWN = {k: _outputs(k)[0] for k in ROUNDS}
EXACT = {k: exact_record(pack_outputs(_outputs(k)[1]), pack_outputs(OWN[k]), narrow=True) for k in ROUNDS}


def _wire(message: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(message))  # as the channel carries it


def test_honest_outputs_pass_by_the_float64_rule():
    adopted = {k: OWN[k].clone() for k in ROUNDS}
    rounds, comparison, notes = read_comparison(_wire(compare_in_place(ROUNDS, OWN, adopted, EXACT, SETTINGS)))
    assert rounds == ROUNDS and comparison.ok and comparison.reason == "within tolerance (float64 rule)"
    assert comparison.max_abs_error == 0.0 and notes == []


def test_a_wrong_round_fails_and_is_named_as_the_files_comparison_names_it():
    adopted = {k: OWN[k].clone() for k in ROUNDS}
    adopted[5][7, 7] += 1.0  # the second kept round: "timed 1"
    _, comparison, _ = read_comparison(_wire(compare_in_place(ROUNDS, OWN, adopted, EXACT, SETTINGS)))
    assert not comparison.ok and comparison.reason.startswith("timed 1: 1 of 16384 elements outside")
    assert comparison.max_abs_error == pytest.approx(1.0, rel=1e-3)


def test_without_a_float64_evaluation_the_kernelbench_rule_decides_and_says_so():
    adopted = {k: OWN[k] + 1e-3 for k in ROUNDS}  # outside allclose's 1e-4
    _, comparison, notes = read_comparison(_wire(compare_in_place(ROUNDS, OWN, adopted, None, SETTINGS)))
    assert not comparison.ok and notes == [KERNELBENCH_FALLBACK]


@pytest.mark.parametrize(
    "message",
    [
        None,
        {"rounds": [3], "notes": [], "ok": "yes", "reason": "r"},
        {"rounds": ["3"], "notes": [], "ok": True, "reason": "r"},
        {"rounds": [3], "notes": [1], "ok": True, "reason": "r"},
        {"rounds": [3], "notes": [], "ok": True, "reason": "r", "max_abs_error": "0"},
    ],
)
def test_a_message_that_is_not_a_comparison_is_refused(message: Any):
    with pytest.raises(ValueError):
        read_comparison(message)


def _partner(timed: dict[str, Any] | None, kept: list[int], adopted: list[int]) -> Partner:
    result = {"rounds": 30, "kept": kept, "audit_error": None, "timed": timed}
    return Partner(WorkerRun(messages=[{"result": result}], returncode=0), Interleaved(kept=kept, adopted=adopted))


def test_the_parent_uses_the_partners_comparison_and_reads_no_file(tmp_path: Path):
    adopted = {k: OWN[k].clone() for k in ROUNDS}
    adopted[9][0, 0] = float("nan")
    partner = _partner(_wire(compare_in_place(ROUNDS, OWN, adopted, EXACT, SETTINGS)), ROUNDS, ROUNDS)
    assert partner.failure() is None
    notes: list[str] = []
    comparison = _timed_check(tmp_path, partner, KbenchConfig(), notes, {})  # no file in tmp_path
    assert not comparison.ok and comparison.reason.startswith("timed 2: NaN in 1 places")


def test_a_comparison_of_other_rounds_than_those_kept_is_the_partners_failure():
    message = _wire(compare_in_place(ROUNDS, OWN, OWN, EXACT, SETTINGS))
    assert "compared rounds" in (_partner(message, [3, 5, 11], [3, 5, 11]).failure() or "")
    assert "compared rounds" in (_partner(message, ROUNDS, [3, 5]).failure() or "")  # not every one adopted
    assert "unusable" in (_partner({"rounds": ROUNDS}, ROUNDS, ROUNDS).failure() or "")


def test_a_comparison_the_partner_could_not_make_is_noted_and_the_files_decide():
    partner = _partner(None, ROUNDS, ROUNDS)
    partner.run.messages[0]["result"]["timed_error"] = "OutOfMemoryError: CUDA out of memory"
    assert partner.failure() is None and partner.timed_comparison() is None
    assert any("could not compare the kept timed rounds" in note for note in partner.notes())


def test_the_partner_judges_in_place_only_when_it_holds_every_kept_rounds_solution_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    spec = WorkerSpec(str(tmp_path / "p.py"), "cpu", 0, 1, {}, str(tmp_path), judging=SETTINGS)
    served = SimpleNamespace(kept=ROUNDS)
    adopted = {k: OWN[k].clone() for k in ROUNDS}
    timed, why = _judged_here(served, OWN, adopted, EXACT, spec)
    assert why is None and timed is not None and timed["ok"] and timed["rounds"] == ROUNDS
    # One round saved by the solution's worker instead: the files decide, and the partner writes its records.
    del adopted[5]
    assert _judged_here(served, OWN, adopted, EXACT, spec) == (None, None)
    saved: list[str] = []
    channel = SimpleNamespace(write_announced=lambda path, pieces: saved.append(path.name))
    _save_rounds(spec, served, OWN, adopted, EXACT, channel)  # type: ignore[arg-type]
    assert sorted(saved) == sorted(
        [f"ref_timed{k}.kbt" for k in ROUNDS]
        + [f"ref_timed_fp64_{k}.kbt" for k in ROUNDS]
        + ["new_timed3.kbt", "new_timed9.kbt"]
    )

    # A comparison that fails in the partner (short of memory, say) leaves the files to decide, and says why.
    def short_of_memory(*args: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr("kbench.timed_comparison.compare_in_place", short_of_memory)
    adopted[5] = OWN[5].clone()
    timed, why = _judged_here(served, OWN, adopted, EXACT, spec)
    assert timed is None and why == "OutOfMemoryError: CUDA out of memory"


@pytest.mark.parametrize(("fixture", "ok"), [("correct_torch", True), ("cached_after_trials", False)])
def test_a_cpu_job_has_its_kept_rounds_judged_by_the_partner(monkeypatch: pytest.MonkeyPatch, fixture: str, ok: bool):
    """End to end on the CPU: the solution stages each kept output, the partner copies it out and compares the
    kept rounds itself; the parent judges by that comparison (a solution right in the trials and wrong after them
    fails it)."""
    seen: list[tuple[list[int], bool]] = []
    original = Partner.timed_comparison

    def spy(self: Partner) -> Any:
        judged = original(self)
        if judged is not None:
            seen.append((judged[0], judged[1].ok))
        return judged

    monkeypatch.setattr(Partner, "timed_comparison", spy)
    with Runner(fast_config(), "cpu") as runner:
        result = run_fixture(runner, read_problem(PROBLEMS / "affine_relu.py"), fixture)
    assert seen and all(judged_ok == ok for _, judged_ok in seen), seen
    if ok:
        assert result.verdict == Verdict.CORRECT, (result.reason, result.flags)
    else:
        assert result.verdict == Verdict.INCORRECT and "timed_output_mismatch" in result.flags, result.reason
