"""Run configuration (trials, tolerances, timeouts, timing), loaded from YAML and validated strictly.

The field defaults are the embedded default configuration; ``configs/default.yaml`` spells them out and a
test keeps the two identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kbench.device_kind import on_gpu

DType = Literal["float64", "float32", "float16", "bfloat16"]
# events: CUDA events around each call (perf_counter on the CPU); graph: CUDA-graph replays timed with events;
# kernel: the device time of the kernels each call launched, from torch.profiler (see docs/timing.md).
TimingMode = Literal["events", "graph", "kernel"]
TIMING_MODES: tuple[str, ...] = get_args(TimingMode)
# Why a mode cannot time a CPU run: it is refused before any job runs rather than silently replaced.
NEEDS_CUDA = {
    "graph": "it replays CUDA graphs",
    "kernel": "it sums the CUDA kernel times torch.profiler records",
}


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Tolerance(_Strict):
    atol: float = Field(ge=0)
    rtol: float = Field(ge=0)


def _default_tolerances() -> dict[str, Tolerance]:
    return {
        "float64": Tolerance(atol=1e-8, rtol=1e-8),
        "float32": Tolerance(atol=1e-4, rtol=1e-4),
        "float16": Tolerance(atol=1e-2, rtol=1e-2),
        "bfloat16": Tolerance(atol=1e-2, rtol=1e-2),
    }


# How a solution's outputs are matched with the reference's (docs/verdicts.md, "Matching outputs"):
# float64: against the reference's float64 evaluation, within tolerance or within a multiple of PyTorch fp32's own
# error; kernelbench: allclose against the fp32 reference alone, as KernelBench's papers judge.
AccuracyPolicy = Literal["float64", "kernelbench"]


class AccuracyConfig(_Strict):
    policy: AccuracyPolicy = "float64"
    # float64 policy: an element further than the tolerance from the float64 evaluation still matches within this
    # many times PyTorch fp32's largest error on the same output (0: the tolerance alone decides).
    fp32_error_factor: float = Field(default=4.0, ge=0.0)


class Timeouts(_Strict):
    reference_s: float = Field(default=300.0, gt=0)  # reference outputs + timing; any worker's own start
    build_s: float = Field(default=900.0, gt=0)  # importing the solution, which compiles it
    run_s: float = Field(default=300.0, gt=0)  # weights, trials and timing of the solution
    # Each step of the run phase but the timing turns (weights, trials, perturbed trials, kernel census) within the
    # run phase's limit: a solution that hangs costs this, not run_s. A solution slow enough to need more could not
    # finish its timing turns within run_s anyway.
    step_s: float = Field(default=90.0, gt=0)


class TimingConfig(_Strict):
    mode: TimingMode = "events"  # how one call is timed; --timing-mode overrides it
    warmup: int = Field(default=5, ge=0)
    # Warm-up also lasts this long, so a GPU that idled (while the worker started) is at its working clocks
    # when the first timed round starts.
    warmup_s: float = Field(default=0.2, ge=0)
    repeats: int = Field(default=30, ge=1)  # timed rounds at least, and per batch between stopping checks
    max_repeats: int = Field(default=2000, ge=1)  # timed rounds at most
    target_rse: float = Field(default=0.005, gt=0)  # stop when every median's relative standard error is below
    budget_s: float = Field(default=5.0, gt=0)  # ... or when one timing loop has run this long
    # ... but not before this long: a median over a few milliseconds sees one clock and power state; one over
    # a second sees what the GPU's clock control does over that time, which the next run sees too.
    min_time_s: float = Field(default=1.0, ge=0)
    # Timing one model alone (the reference's baseline, torch.compile, calibrate) rotates this many input sets; a
    # reference and a solution timed together get fresh inputs for every call instead (kbench.turns).
    input_sets: int = Field(default=3, ge=1)
    # Timed calls whose outputs are compared with the reference's, picked at random after each call (docs/timing.md).
    checked_calls: int = Field(default=8, ge=1)
    flush_l2: bool = True
    reference_drift: float = Field(default=0.10, ge=0)  # see judge: reference timed slower beside the solution
    # A job whose only broken rule is `reference_slowed` runs again in a fresh worker, up to this many times, held
    # against the reference alone timed again: a solution holding the reference back does it again, a slowdown of
    # the GPU or host, or an out-of-date time alone, does not.
    reference_drift_retries: int = Field(default=1, ge=0)

    @model_validator(mode="after")
    def _minimum_within_budget(self) -> TimingConfig:
        if self.min_time_s > self.budget_s:
            raise ValueError(f"min_time_s ({self.min_time_s}) must not exceed budget_s ({self.budget_s})")
        return self


class IntegrityConfig(_Strict):
    perturbation_trials: int = Field(default=1, ge=0)  # trials after every weight is changed (stale_weights)
    audit_float64: bool = True  # also run the reference in float64 and compare both errors against it
    precision_loss_factor: float = Field(default=4.0, ge=1.0)  # flag when the solution's error is this much worse
    precision_floor: float = Field(default=1e-6, ge=0.0)  # relative errors below this count as exact
    kernel_census: bool = True  # profile one CUDA forward call and list its kernels
    peak_bandwidth_gbs: float | None = Field(default=None, gt=0)  # for the physics floor; default: from NVML
    # Confine the untrusted workers' writes with Linux Landlock (kbench.sandbox). auto: where the kernel has
    # Landlock (CPU and CUDA). on: refuse to run without it. off: for a throwaway machine or container.
    sandbox: Literal["auto", "on", "off"] = "auto"


class BaselineConfig(_Strict):
    compile: Literal["auto", "on", "off"] = "auto"  # time torch.compile(Model) too; auto: on CUDA only
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = "default"
    cache: bool = True  # reuse reference timings of an unchanged problem on the same device and torch
    parallel: int = Field(default=4, ge=1)  # references with cached timings (a short check only) run this many at once

    def compile_on(self, device: str) -> bool:
        return self.compile == "on" or (self.compile == "auto" and on_gpu(device))


class PipelineConfig(_Strict):
    # Start the next job's solution worker while the current one runs: it imports torch and the problem and
    # builds the reference's seeded weights on the CPU, then waits at a gate until the GPU is its job's.
    # auto: on CUDA only (on the CPU, that work would share the cores being timed).
    prefetch: Literal["auto", "on", "off"] = "auto"
    # Compare a job's outputs with the reference's (on the CPU, in the parent) while the lane's next job runs.
    # auto: on CUDA only (on the CPU, that work would share the cores being timed).
    judge_beside: Literal["auto", "on", "off"] = "auto"

    def prefetch_on(self, device: str) -> bool:
        return _on(self.prefetch, device)

    def judge_beside_on(self, device: str) -> bool:
        return _on(self.judge_beside, device)


def _on(setting: str, device: str) -> bool:
    return setting == "on" or (setting == "auto" and on_gpu(device))


class KbenchConfig(_Strict):
    seed: int = 0
    trials: int = Field(default=5, ge=1)
    tolerances: dict[DType, Tolerance] = Field(default_factory=_default_tolerances)
    accuracy: AccuracyConfig = Field(default_factory=AccuracyConfig)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    timing: TimingConfig = Field(default_factory=TimingConfig)
    integrity: IntegrityConfig = Field(default_factory=IntegrityConfig)
    baselines: BaselineConfig = Field(default_factory=BaselineConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    @field_validator("tolerances", mode="after")
    @classmethod
    def _keep_unlisted_defaults(cls, value: dict[str, Tolerance]) -> dict[str, Tolerance]:
        # Overriding float32 alone must not silently drop the half-precision tolerances.
        return {**_default_tolerances(), **value}

    def tolerance_for(self, dtype_name: str) -> Tolerance:
        # Integer and boolean outputs have no rounding error to allow for: they must match exactly.
        return self.tolerances.get(dtype_name, Tolerance(atol=0.0, rtol=0.0))


def read_yaml(path: Path) -> object:
    """Parse a YAML file, turning every way it can fail into a ConfigError that names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return {} if data is None else data


def validation_message(path: Path, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        else:
            problems.append(f"key '{key}': {err['msg']} (got {err.get('input')!r})")
    return f"{path}: " + "; ".join(problems)


def load_config(path: Path | None, timing_mode: str | None = None) -> KbenchConfig:
    """The configuration in ``path`` (the defaults without one), with ``timing_mode`` (--timing-mode) over it."""
    config = KbenchConfig()
    if path is not None:
        try:
            config = KbenchConfig.model_validate(read_yaml(path))
        except ValidationError as exc:
            raise ConfigError(validation_message(path, exc)) from None
    return config if timing_mode is None else with_timing_mode(config, timing_mode)


def with_timing_mode(config: KbenchConfig, mode: str) -> KbenchConfig:
    if mode not in TIMING_MODES:
        raise ConfigError(f"--timing-mode must be {', '.join(TIMING_MODES[:-1])} or {TIMING_MODES[-1]}, not '{mode}'")
    return config.model_copy(update={"timing": config.timing.model_copy(update={"mode": mode})})


def check_timing_mode(config: KbenchConfig, device: str) -> None:
    """Graph and kernel timing need CUDA: asking for them on the CPU is a configuration error, raised before any
    job runs, never a silent switch to another timer."""
    mode = config.timing.mode
    if mode in NEEDS_CUDA and not on_gpu(device):
        raise ConfigError(
            f"timing mode '{mode}' needs CUDA ({NEEDS_CUDA[mode]}); on the {device} use timing mode 'events'"
        )


def confines_workers(config: KbenchConfig) -> bool:
    """Whether this run confines its untrusted workers (``integrity.sandbox``): ``auto`` wherever the kernel has
    Landlock, on the CPU and on CUDA alike. ``on`` where it has none is a configuration error, raised before
    anything runs."""
    from kbench.sandbox import landlock_abi

    setting = config.integrity.sandbox
    if setting == "off":
        return False
    if landlock_abi() < 1:
        if setting == "on":
            raise ConfigError(
                "integrity.sandbox is 'on', but this kernel has no Landlock (Linux 5.13 or later, with Landlock "
                "enabled): set it to 'auto' or 'off', or run kbench on such a kernel"
            )
        return False
    return True
