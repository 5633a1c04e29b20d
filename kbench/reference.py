"""What the trusted reference worker produced, loaded into the parent's memory before any solution runs,
so no solution process can alter what it is compared with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kbench.compare import UnreadableOutput, load_record
from kbench.output_checks import load_all, read_announced
from kbench.spec import PERTURBED, TRIAL, WorkerSpec, float64_kind, output_path, state_path


@dataclass
class ReferenceRun:
    trials: list[dict[str, Any]] = field(default_factory=list)
    perturbed: list[dict[str, Any]] = field(default_factory=list)
    # The same calls evaluated in float64, per kind (TRIAL, TIMED, PERTURBED; the last two rounded to fp32), each
    # record with PyTorch fp32's own error on each output (compare.FP32_ERROR); empty when the audit was off or
    # failed. The float64 accuracy policy judges outputs against these (docs/verdicts.md, "Matching outputs").
    float64: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # PyTorch fp32's own relative error against float64 in the trials, measured by the reference worker at full
    # precision: the yardstick for a solution's precision (None without the audit).
    float64_error: float | None = None
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # buffers after the trials
    initial_state: dict[str, torch.Tensor] = field(default_factory=dict)  # ... and before them
    tensors: dict[str, bool] = field(default_factory=dict)  # every parameter and buffer's name -> floating
    timing_ms: list[float] = field(default_factory=list)
    compile_timing_ms: list[float] = field(default_factory=list)  # torch.compile(Model), when measured
    compile_error: str | None = None
    baseline_cached: bool = False  # the timings came from the baseline cache, not this run
    baseline_check_ms: list[float] = field(default_factory=list)  # ... then the short check they passed
    baseline_notes: list[str] = field(default_factory=list)  # why a cache entry was not used and measured again
    timing_mode: str | None = None  # the timing mode actually used for timing_ms (see docs/timing.md)
    compile_timing_mode: str | None = None  # ... and for compile_timing_ms
    timing_notes: list[str] = field(default_factory=list)  # why a timing fell back to another mode
    device_info: dict[str, Any] = field(default_factory=dict)
    moved_bytes: int = 0  # inputs + outputs + parameters and buffers: what one call must at least move
    matrix_flops: int | None = None  # what one call's matrix products must at least compute; None: not counted
    audit_error: str | None = None
    warnings: list[str] = field(default_factory=list)  # degenerate-problem warnings
    error: str | None = None
    detail: str = ""
    phase_s: dict[str, float] = field(default_factory=dict)  # its worker's phases (load, run, compile), by the clock
    step_s: dict[str, float] = field(default_factory=dict)  # ... and their steps (kbench.isolation.REFERENCE_STEPS)

    def clock_s(self) -> dict[str, float]:
        """Where its worker's time went: each phase, and each step as ``step_NAME``."""
        return {**self.phase_s, **{f"step_{name}": seconds for name, seconds in self.step_s.items()}}

    @property
    def output_numel(self) -> int:
        """Elements of the first trial's outputs: what the solution worker poisons before each call."""
        return sum(t.numel() for t in self.trials[0]["tensors"]) if self.trials else 0


def load_reference(
    out_dir: Path, spec: WorkerSpec, result: dict[str, Any], announced: dict[str, tuple[str, int]]
) -> ReferenceRun:
    """The reference worker's files, each only if it is still what the worker announced (``announced``), read
    ahead (``output_checks.load_all``). Its float64 evaluations come rounded to fp32 where the output is fp32, with
    PyTorch fp32's own error on each output measured in the worker at full precision (``compare.exact_record``),
    as are the reference's own error against them (``float64_error``); the timed calls' come from each job's
    reference partner (``kbench.partner``)."""

    def load(kind: str, count: int) -> list[dict[str, Any]]:
        return load_all([output_path(out_dir, "ref", kind, i) for i in range(count)], announced)

    def load_state(role: str) -> dict[str, Any]:
        path = state_path(out_dir, role)
        return load_record(path, read_announced(path, announced))

    counts = {TRIAL: spec.trials, PERTURBED: spec.perturbation_trials}
    try:
        run = ReferenceRun(
            trials=load(TRIAL, counts[TRIAL]),
            perturbed=load(PERTURBED, counts[PERTURBED]),
            state=load_state("ref"),
            initial_state=load_state("ref_initial"),
        )
        if spec.audit_float64 and not result.get("audit_error"):
            run.float64 = {kind: load(float64_kind(kind), count) for kind, count in counts.items()}
            error = result.get("float64_error")
            run.float64_error = float(error) if isinstance(error, int | float) else None
    except (UnreadableOutput, OSError, RuntimeError) as exc:
        return ReferenceRun(error=f"reference outputs unreadable: {exc}")
    run.timing_ms = [float(s) for s in result.get("timing_ms", [])]
    run.compile_timing_ms = [float(s) for s in result.get("compile_timing_ms", [])]
    run.compile_error = result.get("compile_error")
    run.timing_mode, run.compile_timing_mode = result.get("timing_mode"), result.get("compile_timing_mode")
    run.timing_notes = [str(note) for note in result.get("timing_notes", [])]
    run.device_info = result.get("device_info", {})
    run.audit_error = result.get("audit_error")
    run.moved_bytes = sum(int(result.get(key, 0)) for key in ("input_bytes", "output_bytes", "state_bytes"))
    run.tensors = {str(name): bool(floating) for name, floating in result.get("tensors", {}).items()}
    run.matrix_flops = int(result["matrix_flops"]) if result.get("matrix_flops") is not None else None
    return run
