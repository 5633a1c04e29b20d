"""What the parent makes of one job's interleaved timing: the reference partner's run, and the turns it drove.

Trusted side. The partner's outputs are read like the solution's (digests announced on its private pipe), because
the solution ran while they were written and could have rewritten them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbench.compare import Comparison
from kbench.isolation import WorkerRun
from kbench.output_checks import load_all
from kbench.spec import TIMED, float64_kind, output_path
from kbench.timed_comparison import read_comparison
from kbench.trial_comparison import read_trial_judgement
from kbench.turns import Interleaved

# The solution's processes may use this share of the reference's turns on the CPU (wake-ups, the allocator's and
# the driver's own threads) before they count as working in the background, taking cores from the reference.
BACKGROUND_SHARE = 0.25
BACKGROUND_MIN_S = 0.05  # ... and at least this much CPU time in all: short turns measure coarsely


@dataclass(frozen=True)
class Partner:
    """The trusted reference partner's run, and the turns the parent drove between it and the solution."""

    run: WorkerRun
    turns: Interleaved

    def failure(self) -> str | None:
        """Why the reference's side of the job failed, or None: the job then says the reference failed, never
        blames the solution."""
        turns, run = self.turns, self.run
        error = run.last("error")
        said = error["error"].get("reason") if error and isinstance(error.get("error"), dict) else None
        if turns.failed == "reference":
            return f"the reference partner left the timing turns: {said or turns.error}"
        if turns.error is None and (run.last("result") is None or run.returncode != 0):
            return f"the reference partner {run.exit_description()} after the timing turns: {said or 'no result'}"
        try:
            judged = self.timed_comparison()
        except ValueError as exc:
            return f"the reference partner's comparison of the kept timed rounds is unusable: {exc}"
        if judged is not None and not judged[0] == self.turns.kept == self.turns.adopted:
            return f"the reference partner compared rounds {judged[0]}, not the {self.turns.kept} the turns kept"
        try:
            self.trial_judgement(Path(), {}, 0)
        except ValueError as exc:
            return f"the reference partner's comparison of the trials is unusable: {exc}"
        return None

    def timed_comparison(self) -> tuple[list[int], Comparison, list[str]] | None:
        """The partner's own comparison of the kept timed rounds, made where it holds them
        (``kbench.timed_comparison``): (rounds, comparison, notes), or None where it saved them to files instead.
        Raises ValueError for a message that is not one."""
        timed = self._result().get("timed")
        return None if timed is None else read_comparison(timed)

    def trial_judgement(
        self, out_dir: Path, solution_announced: dict[str, tuple[str, int]], count: int
    ) -> tuple[Comparison, float | None, list[str]] | None:
        """The partner's own comparison of the ``count`` trials (``kbench.trial_comparison``): (comparison, the
        solution's float64 error, notes), or None where the parent must compare the files (the partner did not, or
        a file it read is not the one the solution's worker announced, or changed since). Raises ValueError for a
        message that is not one."""
        trials = self._result().get("trials")
        return None if trials is None else read_trial_judgement(trials, out_dir, solution_announced, count)

    def _result(self) -> dict[str, Any]:
        """The partner's result message, or nothing."""
        result = self.run.last("result")
        return result["result"] if result and isinstance(result.get("result"), dict) else {}

    def timing_payload(self) -> dict[str, Any]:
        """The turns' samples in the form ``timing_verdict.judge_timing`` reads."""
        reference, solution = self.turns.samples_ms
        return {
            "timing_ms": solution,
            "ref_timing_ms": reference,
            "timing_mode": self.turns.mode,
            "timing_fallback": self.turns.fallback,
        }

    def flags(self) -> set[str]:
        """What the turns show against the solution: it broke their protocol, or worked while the reference did."""
        flags = set()
        if self.turns.failed == "solution":
            flags.add("bad_timing")
        busy, turns = self.turns.background_cpu_s, self.turns.reference_turns_s
        if busy > BACKGROUND_MIN_S and busy > BACKGROUND_SHARE * turns:
            flags.add("background_work")
        if self.turns.reference_rescheduled:
            flags.add("reference_tampered")
        return flags

    def notes(self) -> list[str]:
        turns = self.turns
        notes = []
        if turns.background_cpu_s > BACKGROUND_MIN_S:
            notes.append(
                f"the solution's processes used {turns.background_cpu_s:.3g} s of CPU during the reference's turns "
                f"({turns.reference_turns_s:.3g} s)"
            )
        if turns.reference_rescheduled:
            notes.append(
                "the reference partner's main thread was rescheduled during the timing turns ("
                + "; ".join(turns.reference_rescheduled)
                + "): kbench never does that, another process of this user did"
            )
        if turns.error and turns.failed == "solution":
            notes.append(f"timing turns ended early: {turns.error}")
        said = self._result().get("timed_error")
        if said:
            notes.append(f"the reference partner could not compare the kept timed rounds itself ({said})")
        said = self._result().get("trials_error")
        if said:
            notes.append(f"the reference partner could not compare the trials itself ({str(said)[:300]})")
        if turns.handoff_refused:
            notes.append(
                "the reference partner refused to copy a kept timed output out of the solution's staging buffer "
                f"({turns.handoff_refused}); the solution's worker saved it to a file instead"
            )
        return notes

    def timed_announced(self, solution_announced: dict[str, tuple[str, int]]) -> dict[str, tuple[str, int]]:
        """The digests to read the solution's kept timed outputs by: the partner's for the rounds it adopted (the
        solution's worker may have written a file of the same name; it is not the one the partner saved), the
        solution worker's for the rest."""
        adopted = {output_path(Path(), "new", TIMED, k).name for k in self.turns.adopted}
        announced = {name: said for name, said in solution_announced.items() if name not in adopted}
        announced.update({name: said for name, said in self.run.outputs.items() if name in adopted})
        return announced

    def kept_outputs(self, out_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The partner's outputs of the kept rounds, and their float64 evaluations (empty when the audit was off or
        failed). Raises UnreadableOutput when a file is not what the partner announced."""
        announced = self.run.outputs
        outputs = load_all([output_path(out_dir, "ref", TIMED, k) for k in self.turns.kept], announced)
        result = self._result()
        audit_error = result.get("audit_error") if result else 1
        if audit_error is not None or not self.turns.kept:
            return outputs, []
        exact = load_all([output_path(out_dir, "ref", float64_kind(TIMED), k) for k in self.turns.kept], announced)
        return outputs, exact
