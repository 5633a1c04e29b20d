"""The baseline cache's checks (issue #17): a cached time alone is used only when its entry says it was measured
well and a short check, timed just now by the reference worker that runs anyway, does not find it far too slow.
Anything else is a miss: the reference is timed again alone and its entry replaced.

The reference here sleeps 2 ms in each call: its time alone is the same on an idle and on a busy CPU (a sleep does
not compete for one), so a check can neither convict an honest entry nor clear a slow one by chance."""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
from pathlib import Path
from typing import Any

import pytest
from conftest import PROBLEMS, count_reference_workers, fast_config

from kbench import __version__
from kbench.baselines import CHECK_ALLOWANCE, Baseline, check_refusal, refusal
from kbench.catalog import Problem, Solution, read_problem, read_solution
from kbench.config import KbenchConfig
from kbench.results import Verdict
from kbench.runner import Job, Runner
from kbench.store import JsonStore

SLEEP_S = 0.002
NOT_USED = "the baseline cache's time alone was not used"


def _config() -> KbenchConfig:
    # fast_config's target_rse (10) lets any spread pass; at 5 % "far over it" (4x) means something. The sleeping
    # reference settles within its first rounds either way.
    config = fast_config()
    return config.model_copy(update={"timing": config.timing.model_copy(update={"target_rse": 0.05})})


def _sleepy(folder: Path, name: str) -> Problem:
    """affine_relu with a sleep in its forward; ``name`` goes into the text too, so each has a cache key of its own."""
    source = (PROBLEMS / "affine_relu.py").read_text()
    source = source.replace("        return torch.relu(", f"        time.sleep({SLEEP_S})\n        return torch.relu(")
    path = folder / f"{name}.py"
    path.write_text(f"# {name}\nimport time\n{source}")
    return read_problem(path)


def _solution(folder: Path) -> Solution:
    path = folder / "sleepy_solution.py"
    path.write_text(
        "import time\nimport torch\nimport torch.nn as nn\n\n\nclass ModelNew(nn.Module):\n"
        "    def __init__(self, in_features, out_features):\n        super().__init__()\n"
        "        self.linear = nn.Linear(in_features, out_features)\n\n    def forward(self, x):\n"
        f"        time.sleep({SLEEP_S})\n        return torch.relu(self.linear(x))\n"
    )
    return read_solution(path)


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Problem, dict[str, Any]]:
    """The sleeping reference timed once, alone, as a cold run does: its cache entry."""
    folder = tmp_path_factory.mktemp("baselines")
    problem, store = _sleepy(folder, "sleepy"), JsonStore(folder / "baselines.json")
    with Runner(_config(), "cpu", baseline_cache=store) as cold:
        reference = cold.references.get(problem, {})
        key = cold.references.baseline_key(problem, {})
    assert reference.error is None and not reference.baseline_cached, reference.error
    return problem, store.entries()[key]


def _key(problem: Problem) -> str:
    with Runner(_config(), "cpu") as runner:
        return runner.references.baseline_key(problem, {})


def _put(store: JsonStore, problem: Problem, entry: dict[str, Any], **changes: Any) -> str:
    """Store ``entry`` for ``problem`` as timed on a quiet host, with ``changes`` (``measured`` merged, not
    replaced); returns its key. The cold run's own host load is left out, so only ``changes`` can count against it."""
    quiet = {"cpu_wait": 0.0, "scheduled_s": 1.0, "load": 0.0}
    record = {**entry["measured"], **quiet, **changes.pop("measured", {})}
    key = _key(problem)
    store.put(key, Baseline(**{**entry, "measured": record, **changes}))
    return key


def _honest(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` with each sample at the sleep's floor: no call can take less, so no check can find the entry too
    slow. The measured samples may have been slowed by a busy host (a CI machine of two cores), and a check on a
    quieter one would then rightly convict them."""
    return {**entry, "eager_ms": [SLEEP_S * 1e3] * len(entry["eager_ms"])}


def test_a_fresh_entry_records_how_it_was_measured(measured):
    _, entry = measured
    record, samples = entry["measured"], entry["eager_ms"]
    assert record["samples"] == len(samples) >= 3 and 0 <= record["rse"] < 0.05 * 4
    assert record["cpus"] == os.cpu_count() and record["kbench"] == __version__
    assert record["cpu_wait"] is None or 0 <= record["cpu_wait"] <= 1
    assert record["scheduled_s"] is None or record["scheduled_s"] >= 0
    assert record["load"] is None or record["load"] >= 0
    assert dt.datetime.fromisoformat(record["at"]) <= dt.datetime.now(dt.UTC)
    assert record["device"] == {}  # NVML is read on CUDA only
    assert statistics.median(samples) >= SLEEP_S * 1e3


@pytest.mark.slow
def test_a_cached_time_alone_50x_too_slow_is_caught_by_its_check_timed_again_alone_and_replaced(
    measured, tmp_path, monkeypatch
):
    problem, entry = measured
    store = JsonStore(tmp_path / "baselines.json")
    honest_ms = statistics.median(entry["eager_ms"])
    key = _put(store, problem, entry, eager_ms=[50 * sample for sample in entry["eager_ms"]])
    batches = count_reference_workers(monkeypatch)
    with Runner(_config(), "cpu", baseline_cache=store) as warm:
        result = warm.run(Job(problem, _solution(tmp_path)))
    assert result.verdict == Verdict.CORRECT, result.reason
    assert batches == [1, 1], "the worker that checked the cached time, then one that timed the reference alone"
    (note,) = (note for note in result.notes if note.startswith(NOT_USED))
    assert "a check of" in note and "x faster" in note and "its entry replaced" in note, note
    assert not any(note.startswith("reference timings (alone") for note in result.notes), result.notes
    # Neither the time alone in the result nor the cache keeps the outlier: both hold the new time.
    assert result.ref_ms_alone is not None and result.ref_ms_alone < 5 * honest_ms
    replaced = store.entries()[key]
    assert statistics.median(replaced["eager_ms"]) == result.ref_ms_alone
    assert replaced["measured"]["samples"] == len(replaced["eager_ms"])


@pytest.mark.slow
def test_references_checked_side_by_side_leave_only_the_outlier_to_be_timed_again_alone(
    measured, tmp_path, monkeypatch
):
    _, entry = measured
    entry = _honest(entry)
    honest, outlier = _sleepy(tmp_path, "honest"), _sleepy(tmp_path, "outlier")
    store = JsonStore(tmp_path / "baselines.json")
    honest_key = _put(store, honest, entry)
    outlier_key = _put(store, outlier, entry, eager_ms=[50 * sample for sample in entry["eager_ms"]])
    batches = count_reference_workers(monkeypatch)
    with Runner(_config(), "cpu", baseline_cache=store) as warm:
        assert warm.references.prepare([(honest, {}), (outlier, {})]).count == 2
        assert batches == [2], "both checked side by side"
        assert warm.references.ready(outlier, {}) is None, "a refused entry's reference is left for its job"
        kept, again = warm.references.get(honest, {}), warm.references.get(outlier, {})
    assert batches == [2, 1], "only the outlier ran again, alone"
    # A check beside another reference may be slowed, never sped up: the honest entry stands.
    assert kept.baseline_cached and kept.timing_ms == entry["eager_ms"] and len(kept.baseline_check_ms) >= 3
    assert not kept.baseline_notes
    assert not again.baseline_cached and again.baseline_notes[0].startswith(NOT_USED), again.baseline_notes
    assert statistics.median(store.entries()[outlier_key]["eager_ms"]) < 5 * statistics.median(entry["eager_ms"])
    assert store.entries()[honest_key]["eager_ms"] == entry["eager_ms"]


SCATTERED = [2.1, 2.2, 3.0, 4.5, 6.0]  # a median's rse of 33 %, against 4 x target_rse = 20 %


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"eager_ms": SCATTERED}, "relative standard error was 33"),
        ({"measured": {"cpu_wait": 0.6}}, "waited for a CPU 60% of the time"),
        (None, "did not record how it was measured"),
    ],
    ids=["huge_rse", "overloaded", "old_format"],
)
def test_an_entry_measured_badly_or_not_known_to_be_measured_well_is_not_used(
    measured, tmp_path, monkeypatch, changes, why
):
    problem, entry = measured
    store = JsonStore(tmp_path / "baselines.json")
    if changes is None:  # as written before kbench recorded how it measured: no such field at all
        key = _key(problem)
        old = {name: value for name, value in entry.items() if name != "measured"}
        store.path.write_text(json.dumps({key: old}), encoding="utf-8")
    else:
        key = _put(store, problem, entry, **changes)
    batches = count_reference_workers(monkeypatch)
    with Runner(_config(), "cpu", baseline_cache=store) as warm:
        assert warm.references.prepare([(problem, {})]).count == 0, "a refused entry is not even checked"
        reference = warm.references.get(problem, {})
    assert [n for n in batches if n] == [1], "one worker: the reference timed alone, unchecked entry unused"
    assert reference.error is None and not reference.baseline_cached
    (note,) = reference.baseline_notes
    assert note.startswith(NOT_USED) and why in note, note
    fresh = store.entries()[key]
    assert fresh["eager_ms"] == reference.timing_ms and fresh["measured"]["samples"] == len(reference.timing_ms)


def test_an_honest_entry_is_used_after_its_check_without_timing_the_reference_again(measured, tmp_path, monkeypatch):
    problem, entry = measured
    entry = _honest(entry)
    store = JsonStore(tmp_path / "baselines.json")
    key = _put(store, problem, entry)
    stored = store.entries()[key]
    batches = count_reference_workers(monkeypatch)
    with Runner(_config(), "cpu", baseline_cache=store) as warm:
        result = warm.run(Job(problem, _solution(tmp_path)))
    assert result.verdict == Verdict.CORRECT, result.reason
    assert batches == [1], "one reference worker, for the outputs and the check: no full timing"
    assert result.ref_ms_alone == statistics.median(entry["eager_ms"])
    (note,) = (note for note in result.notes if note.startswith("reference timings (alone) from the baseline cache"))
    assert ", checked by " in note and "calls just now" in note, note
    assert not any(note.startswith(NOT_USED) for note in result.notes), result.notes
    assert store.entries()[key] == stored, "the entry is left as it was"


def _entry(samples: list[float], mode: str = "events") -> Baseline:
    return Baseline(eager_ms=samples, compile_ms=[], timing_mode=mode)


def test_only_a_check_faster_than_the_cached_time_beyond_allowance_and_noise_convicts_it():
    steady = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert check_refusal(_entry(steady), [1.0 / (1 + CHECK_ALLOWANCE) * 1.02] * 6, "events") is None  # within 25 %
    assert check_refusal(_entry(steady), [0.7] * 6, "events") is not None  # 1.43x faster
    assert check_refusal(_entry(steady), [20.0] * 6, "events") is None  # slower: a busy host now, or beside others
    assert check_refusal(_entry(steady), [0.02] * 6, "graph") is None  # another mode: nothing to compare
    assert check_refusal(_entry(steady), [], "events") is None  # no check
    # The case: 31.76 ms cached, 0.59 ms with a fresh cache.
    reason = check_refusal(_entry([31.76] * 30), [0.59, 0.6, 0.58, 0.61, 0.59], "events")
    assert reason is not None and "53.8x faster" in reason, reason
    # Noise widens the allowance: a scattered check 1.43x faster is no proof.
    assert check_refusal(_entry(steady), [0.4, 0.55, 0.7, 0.85, 1.0], "events") is None


def test_refusal_reads_the_spread_and_count_from_the_samples_not_from_what_the_entry_says(measured):
    _, entry = measured
    timing = _config().timing

    def refused(samples: list[float] | None = None, **record: Any) -> str:
        quiet = {"cpu_wait": 0.0, "scheduled_s": 1.0, "load": 0.0, "rse": 0.0, "samples": 100}
        claims = {**entry["measured"], **quiet, **record}
        found = Baseline(**{**entry, "measured": claims, "eager_ms": samples or entry["eager_ms"]})
        return refusal(found, timing) or ""

    assert refused() == ""
    assert "relative standard error was 33" in refused(SCATTERED)
    assert "holds 2 samples, fewer than the 3 any timing takes" in refused([2.1, 2.1])
    # The load average counts what kbench itself ran in the minute before: where the threads' own wait for a CPU
    # is known, it decides; where it is not, a load over the core count refuses.
    assert refused(load=9.0, cpus=2) == ""
    assert "load average was 9.00 on 2 CPUs" in refused(load=9.0, cpus=2, cpu_wait=None, scheduled_s=None)
    assert refused(load=1.5, cpus=2, cpu_wait=None, scheduled_s=None) == ""
    assert "waited for a CPU 30%" in refused(cpu_wait=0.3)
    assert refused(cpu_wait=0.9, scheduled_s=0.01) == "", "a few milliseconds are too short to judge by their wait"
