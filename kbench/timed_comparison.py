"""The kept timed rounds compared where they are: in the trusted reference partner, on its device.

Once every kept round's solution output was copied out of the solution's process (``kbench.handoff``), the partner
holds on the device all three records each kept round is judged by: its own fp32 output, the solution's, and the
float64 evaluation. Writing them to files for the parent to read back and compare on the CPU (24 files, 268 MB
each for a 67M-element output) cost more than the job's run, and the judging of the next job's outputs waited on
it. The partner compares them with the parent's own code (``output_checks.compare_loaded``, the same rules and
messages) and sends the outcome; the parent checks its form and that it covers the rounds the turns kept
(``kbench.partner``). Where a kept round was saved by the solution's worker instead, the files are used, as before.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from kbench.compare import Comparison
from kbench.config import KbenchConfig
from kbench.execution import pack_outputs
from kbench.output_checks import compare_loaded
from kbench.spec import TIMED


def judging_settings(config: KbenchConfig) -> dict[str, Any]:
    """What the partner compares by: the run's tolerances and accuracy policy (``WorkerSpec.judging``)."""
    return config.model_dump(include={"tolerances", "accuracy"})


def compare_in_place(
    rounds: list[int],
    own: dict[int, Any],
    adopted: dict[int, Any],
    exact: dict[int, dict[str, Any]] | None,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The solution's outputs of ``rounds`` (``adopted``) against the partner's (``own``) and, when the float64
    audit succeeded, their float64 evaluations (``exact``), as the message the parent reads."""
    config = KbenchConfig.model_validate(settings)
    references = [pack_outputs(own[k], on_cpu=False) for k in rounds]
    outputs = [pack_outputs(adopted[k], on_cpu=False) for k in rounds]
    records = [exact[k] for k in rounds] if exact else None
    notes: list[str] = []
    comparison, _ = compare_loaded(TIMED, references, outputs, config.tolerance_for, records, notes, config.accuracy)
    return {"rounds": rounds, **outcome_message(comparison, notes)}


def outcome_message(comparison: Comparison, notes: list[str]) -> dict[str, Any]:
    """A comparison the partner made, and its notes, as it sends them (``read_outcome`` reads them)."""
    return {**asdict(comparison), "notes": notes}


def read_comparison(message: Any) -> tuple[list[int], Comparison, list[str]]:
    """The rounds, the comparison and the notes of the partner's message; ValueError when it is not one."""
    comparison, notes = read_outcome(message)
    rounds = message.get("rounds")
    if not isinstance(rounds, list) or not all(type(k) is int for k in rounds):
        raise ValueError("no list of rounds")
    return rounds, comparison, notes


def read_outcome(message: Any) -> tuple[Comparison, list[str]]:
    """The comparison and notes of a partner's message (``outcome_message``); ValueError when it is not one."""
    if not isinstance(message, dict):
        raise ValueError("not an object")
    notes = message.get("notes")
    if not isinstance(notes, list) or not all(isinstance(note, str) for note in notes):
        raise ValueError("no list of notes")
    errors = [message.get("max_abs_error"), message.get("max_rel_error")]
    if not all(e is None or is_number(e) for e in errors):
        raise ValueError("errors that are not numbers")
    if not isinstance(message.get("ok"), bool) or not isinstance(message.get("reason"), str):
        raise ValueError("no outcome")
    comparison = Comparison(
        message["ok"],
        message["reason"],
        *(None if e is None else float(e) for e in errors),
        not_tensor=bool(message.get("not_tensor")),
        outside_fp32=str(message.get("outside_fp32") or ""),
    )
    return comparison, notes


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
