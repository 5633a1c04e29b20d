"""Interleaved timing across two processes (kbench.turns): the parent's driver against scripted workers, and the
attacks it closes end to end on the CPU: answers remembered across timed calls, a solution that changes its own
process to slow whatever else runs there, and one that keeps a core busy while the reference takes its turn."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import PROBLEMS, run_fixture

from kbench.catalog import read_problem
from kbench.config import KbenchConfig, Timeouts, TimingConfig
from kbench.results import Verdict
from kbench.runner import Runner
from kbench.timing import TimingPlan
from kbench.turns import Interleaved, WorkerTurns, interleave, overhead_ms

WIDE = read_problem(PROBLEMS / "wide_linear.py")
PLAN = TimingPlan(
    warmup=2, warmup_s=0.0, repeats=5, max_repeats=20, target_rse=0.0, budget_s=60.0, min_time_s=0.0, flush_l2=False
)


class ScriptedWorker:
    """A thread speaking the worker's side of the turn protocol, with hooks to misbehave."""

    def __init__(
        self,
        label: str,
        sample: Callable[[int], Any] = lambda k: 1.0 + k % 7 / 10,
        handoff: str | None = None,
        call_s: float = 0.0,
        trials_wrong: bool | None = None,
    ) -> None:
        command_read, self.command_write = os.pipe()
        self.trials_wrong = trials_wrong  # the partner's answer when asked before the turns (None: not known)
        self.skipped: bool | None = None  # whether its finish said to skip the rest
        self.reply_read, reply_write = os.pipe()
        self.label, self.sample, self.call_s = label, sample, call_s  # call_s: how long each call takes
        # "stage" (a solution that stages each kept output), "refuse" (a partner that refuses the odd rounds')
        self.handoff = handoff
        self.rounds: list[int] = []
        self.kept: list[int] = []
        self.saved: list[int] = []  # rounds the solution was told to save after the partner refused them
        self.adopted: dict[int, int] = {}  # the partner: slot -> the round whose staged output it copied
        self.slots: dict[int, int] = {}  # slot -> the round whose output it holds
        self.finished: list[int] | None = None
        self._thread = threading.Thread(target=self._serve, args=(command_read, reply_write), daemon=True)
        self._thread.start()

    def turns(self) -> WorkerTurns:
        return WorkerTurns(
            self.label, self.command_write, self.reply_read, os.getpid(), self._thread.is_alive, self._end
        )

    def _end(self) -> None:
        os.close(self.command_write)

    def _keep(self, command: dict[str, Any]) -> dict[str, Any]:
        """The reply to a keep (or a save) command."""
        if "save" in command:
            self.saved.append(command["save"])
            return {"kept": command["save"]}
        index, slot = command["keep"], command["slot"]
        self.kept.append(index)
        self.slots[slot] = index
        self.adopted.pop(slot, None)
        if self.handoff == "stage" and not command.get("file"):
            return {"staged": {"round": index, "handle": "00" * 64, "structure": "tensor", "tensors": []}}
        if command.get("adopt") is not None:
            if self.handoff == "refuse" and index % 2:
                return {"refused": f"HandoffError: round {index} is odd"}
            self.adopted[slot] = index
        return {"kept": index}

    def join(self) -> None:
        self._thread.join(timeout=10)

    def _serve(self, command_read: int, reply_write: int) -> None:
        commands = os.fdopen(command_read, "rb")

        def reply(**message: Any) -> None:
            os.write(reply_write, (json.dumps(message) + "\n").encode())

        reply(ready=True)
        try:
            for line in commands:
                command = json.loads(line)
                if "batch" in command:
                    first, count = command["batch"]
                    for k in range(first, first + count):
                        while "go" not in (step := json.loads(commands.readline() or b'{"go": null}')):
                            reply(**self._keep(step))
                        if step["go"] is None:
                            return  # the driver ended the turns
                        self.rounds.append(step["go"])
                        time.sleep(self.call_s)
                        reply(done=k)
                    reply(samples=[self.sample(k) for k in range(first, first + count)])
                elif "keep" in command or "save" in command:
                    reply(**self._keep(command))
                elif "check" in command:
                    reply(checked=self.trials_wrong)
                elif "finish" in command:
                    self.finished, self.skipped = command["finish"], bool(command.get("skip"))
                    return
        finally:
            os.close(reply_write)


def drive(reference: ScriptedWorker, solution: ScriptedWorker, checked: int = 4) -> Interleaved:
    return interleave(reference.turns(), solution.turns(), PLAN, checked, threading.Event())


def test_the_driver_alternates_rounds_keeps_a_random_sample_and_tells_both_which():
    reference, solution = ScriptedWorker("reference"), ScriptedWorker("solution")
    result = drive(reference, solution)
    reference.join(), solution.join()
    assert result.error is None, result.error
    assert reference.rounds == solution.rounds == list(range(result.rounds))
    assert result.rounds == 2 + 20  # two warm-up rounds, then rounds until max_repeats (the target never holds)
    assert result.samples_ms == [[1.0 + k % 7 / 10 for k in range(2, 22)]] * 2
    assert len(result.kept) == 4 and all(2 <= k < 22 for k in result.kept)  # timed rounds only
    assert reference.finished == solution.finished == result.kept
    assert set(result.kept) <= set(reference.kept) and set(result.kept) <= set(solution.kept)
    # Each kept round went into one of four slots, replacing the one before: the slots hold the final sample.
    assert sorted(reference.slots.values()) == sorted(solution.slots.values()) == result.kept
    assert set(solution.slots) == {0, 1, 2, 3}


@pytest.mark.parametrize("wrong", [True, False, None])
def test_turns_end_before_any_round_where_the_partner_finds_the_trials_wrong_already(wrong: bool | None):
    reference, solution = ScriptedWorker("reference", trials_wrong=wrong), ScriptedWorker("solution")
    result = drive(reference, solution)
    reference.join(), solution.join()
    assert result.error is None, result.error
    if wrong:  # an incorrect verdict whatever a timing would show: none is taken, and both skip the rest
        assert result.skipped and result.rounds == 0 and reference.rounds == solution.rounds == []
        assert reference.finished == solution.finished == [] and reference.skipped and solution.skipped
    else:  # right, or not known (the partner could not compare them): timed as ever
        assert not result.skipped and result.rounds == 22 and len(result.kept) == 4
        assert reference.skipped is solution.skipped is False


def test_a_solution_that_reports_less_than_its_calls_took_stands_out_in_its_turns_overhead():
    """The parent times every turn itself: a solution whose samples leave out part of its calls (a hooked timer)
    spends that part outside its samples, which the reference does not. Recorded per job (``turn_overhead_ms``)."""
    calls_ms = 6.0

    def overheads(reported_ms: float) -> dict[str, float]:
        # Samples that vary a little, so the median's error never meets the plan's target of 0: 20 timed rounds.
        reference = ScriptedWorker("reference", sample=lambda k: calls_ms + k % 3 / 100, call_s=calls_ms / 1e3)
        solution = ScriptedWorker("solution", sample=lambda k: reported_ms + k % 3 / 100, call_s=calls_ms / 1e3)
        result = drive(reference, solution)
        reference.join(), solution.join()
        assert result.error is None and len(result.turn_ms[1]) == len(result.samples_ms[1]) == 20, result.error
        found = overhead_ms(result)
        assert found is not None
        return found

    honest, hooked = overheads(calls_ms), overheads(calls_ms / 4)
    assert abs(honest["solution"] - honest["reference"]) < 2.0, honest
    assert hooked["solution"] - hooked["reference"] > 3.0, hooked  # 4.5 ms of each call left out


@pytest.mark.parametrize("partner", [None, "refuse"])
def test_staged_outputs_are_adopted_by_the_partner_and_saved_by_the_solution_where_it_refuses(partner: str | None):
    reference, solution = ScriptedWorker("reference", handoff=partner), ScriptedWorker("solution", handoff="stage")
    result = drive(reference, solution)
    reference.join(), solution.join()
    assert result.error is None, result.error
    # The partner was handed every staged layout; each round it refused, the solution saved, and only the rounds
    # the partner holds in the end are read from the partner's files.
    # After the first refusal, the solution is told to save every later keep to a file: none is staged again.
    first = next((k for k in solution.kept if partner == "refuse" and k % 2), None)
    refused = [] if first is None else [first]
    assert solution.saved == refused
    staged = [k for k in solution.kept if first is None or k < first]
    assert result.adopted == sorted(reference.adopted.values()) == [k for k in result.kept if k in staged]
    assert (result.handoff_refused is not None) == bool(refused)


def test_a_staged_output_of_another_round_breaks_the_turns_and_names_the_solution():
    solution = ScriptedWorker("solution", handoff="stage")
    keep = solution._keep
    solution._keep = lambda command: {"staged": {**keep(command)["staged"], "round": -1}}  # type: ignore[method-assign]
    result = drive(ScriptedWorker("reference"), solution)
    assert result.failed == "solution" and "kept a round other than" in (result.error or "")


def test_a_solution_that_stages_what_it_was_told_to_save_breaks_the_turns():
    # Once the partner refused, the parent reads that round's output from the solution's file; staging again
    # instead would leave a round with no output at all.
    solution = ScriptedWorker("solution", handoff="stage")
    keep = solution._keep
    solution._keep = lambda command: keep({k: v for k, v in command.items() if k != "file"})  # type: ignore[method-assign]
    result = drive(ScriptedWorker("reference", handoff="refuse"), solution)
    assert result.failed == "solution" and "told to save" in (result.error or "")


def test_the_kept_rounds_are_spread_over_every_timed_round():
    seen: Counter[int] = Counter()
    for _ in range(60):
        seen.update(drive(ScriptedWorker("reference"), ScriptedWorker("solution"), checked=2).kept)
    early, late = sum(seen[k] for k in range(2, 12)), sum(seen[k] for k in range(12, 22))
    assert early > 20 and late > 20  # a fixed or front-loaded pick would leave one half (nearly) unchecked


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "fast", True])
def test_a_forged_sample_breaks_the_turns_and_names_the_solution(bad: Any):
    result = drive(ScriptedWorker("reference"), ScriptedWorker("solution", sample=lambda k: bad))
    assert result.failed == "solution" and "sample" in (result.error or "")


def test_a_worker_that_dies_ends_the_turns_without_hanging():
    solution = ScriptedWorker("solution")
    os.close(solution.command_write)  # it can never get a command: its thread ends, closing its replies
    solution.command_write = os.open(os.devnull, os.O_WRONLY)
    result = drive(ScriptedWorker("reference"), solution)
    assert result.failed == "solution" and result.error


def _timing_config(**timing: Any) -> KbenchConfig:
    """Enough timed rounds for medians to mean something on a shared 2-core machine, and no more."""
    settings = {"warmup": 2, "warmup_s": 0.0, "repeats": 15, "min_time_s": 0.3, "target_rse": 0.02, "budget_s": 3.0}
    return KbenchConfig(
        trials=2,
        timing=TimingConfig(**{**settings, **timing}),
        timeouts=Timeouts(reference_s=120.0, build_s=120.0, run_s=120.0),
    )


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    with Runner(_timing_config(), "cpu") as shared:
        yield shared


def test_an_honest_solution_is_correct_at_about_the_references_speed(runner: Runner):
    result = run_fixture(runner, WIDE, "honest")
    assert result.verdict == Verdict.CORRECT, (result.reason, result.flags, result.detail[-2000:])
    assert result.speedup is not None and 0.6 < result.speedup < 1.6
    assert not {"background_work", "settings_changed"} & set(result.flags)
    # What the rounds cost is recorded: at least the timed calls of both sides, in every round (docs/timing.md).
    assert result.turn_rounds is not None and result.turn_rounds >= (result.new_timing_count or 0) > 0
    assert result.ref_ms is not None and result.new_ms is not None
    calls_s = result.turn_rounds * (result.ref_ms + result.new_ms) / 1000
    assert result.turns_s is not None and calls_s < result.turns_s <= result.wall_s
    # ... and each side's time per turn outside its samples: a turn holds its sample, so never below zero here.
    assert result.turn_overhead_ms is not None and min(result.turn_overhead_ms.values()) >= 0, result.turn_overhead_ms


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["memoizes_by_content", "memoizes_by_pointer"])
def test_a_memoiser_gets_no_speedup(runner: Runner, fixture: str):
    # Every timed call has inputs no call saw before, so an answer remembered under the input's values never
    # comes back, and one remembered under its address is wrong (the checked outputs show it).
    result = run_fixture(runner, WIDE, fixture)
    if result.verdict == Verdict.CORRECT:
        assert result.speedup is not None and result.speedup < 1.6, result.speedup
    else:
        assert result.verdict == Verdict.INCORRECT and result.speedup is None, (result.reason, result.flags)


@pytest.mark.slow
def test_fewer_threads_left_to_the_rest_of_its_process_buy_no_speedup(runner: Runner):
    # The reference is timed in a trusted process of its own, which the solution's thread setting cannot reach;
    # the change is still recorded.
    result = run_fixture(runner, WIDE, "one_thread_for_others")
    assert result.verdict == Verdict.CORRECT, (result.reason, result.flags)
    assert "settings_changed" in result.flags
    assert any("get_num_threads" in note for note in result.notes), result.notes
    assert result.speedup is not None and result.speedup < 1.6, result.speedup


@pytest.mark.slow
def test_a_core_kept_busy_while_the_reference_takes_its_turn_is_rejected(runner: Runner):
    result = run_fixture(runner, WIDE, "spins_beside")
    assert result.verdict == Verdict.REJECTED, (result.reason, result.flags, result.notes)
    assert "background_work" in result.flags and result.speedup is None


@pytest.mark.slow
@pytest.mark.parametrize("undo_subreaper", [False, True], ids=["inherited_by_the_worker", "inherited_by_the_parent"])
def test_a_core_kept_busy_by_a_process_that_left_the_workers_group_is_rejected(
    runner: Runner, undo_subreaper: bool, monkeypatch: pytest.MonkeyPatch
):
    if undo_subreaper:
        monkeypatch.setenv("KBENCH_TEST_UNDO_SUBREAPER", "1")  # the worker inherits the environment
    result = run_fixture(runner, WIDE, "spins_escaped")
    assert result.verdict == Verdict.REJECTED, (result.reason, result.flags, result.notes)
    assert "background_work" in result.flags and result.speedup is None
    assert any("killed 1 process(es)" in note for note in result.notes), result.notes
