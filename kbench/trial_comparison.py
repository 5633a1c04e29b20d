"""The trials compared in the trusted reference partner, on its device, instead of in the parent from files.

The parent read, hashed and compared every trial file on the CPU, in float64: seconds per job where outputs are tens
of millions of elements, more than the next job's run. The partner makes the reference's trials itself before the
timing turns, as the reference worker makes them (the float64 evaluation on a copy of the model as it is, then the
fp32 calls, which move the buffers as the solution's trials moved its own). Before the turns, once both workers'
trials are done, the parent asks it to read the solution worker's trial files, hash the bytes it read, and compare
them on the device with the parent's own code (``output_checks.compare_loaded``); where the answers are wrong
already (``wrong_answers``) the parent ends the turns there, since no timing or later check can change the verdict.
The parent uses that comparison only where every file's digest and size are the ones the solution's worker
announced when it wrote it, and the file is still the one the partner read (its inode and ctime): the partner then
compared the bytes the parent would have read. Otherwise (a file rewritten, unreadable, the partner's float64
evaluation failed) the parent compares the files itself, as before, and finds what changed; a job whose turns were
skipped then has no timing, which the parent refuses (``bad_timing``), so it can never be judged correct.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from kbench import tensor_files
from kbench.audit import worst_relative_error
from kbench.compare import Comparison, UnreadableOutput, load_outputs
from kbench.config import KbenchConfig
from kbench.output_checks import compare_loaded, read_ahead
from kbench.spec import TRIAL, WorkerSpec, bytes_digest, output_path
from kbench.timed_comparison import is_number, outcome_message, read_outcome

Records = list[dict[str, Any]]


def _most_bytes(records: Records) -> int:
    """The most a solution's trial file may hold: the reference's tensor bytes, aligned, and a header."""
    data = max(sum(t.numel() * t.element_size() for t in r["tensors"]) for r in records) if records else 0
    count = max(len(r["tensors"]) for r in records) if records else 0
    return data + count * tensor_files.ALIGN + tensor_files.MAX_HEADER_BYTES


def _read_file(path: Path, limit: int) -> tuple[tensor_files.Content, list[int]]:
    """A solution file's bytes, and what identifies the file as it was read (``_identity``): a regular file, not
    followed through a link nor waited on as a FIFO, at most ``limit`` bytes."""
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode) or status.st_size > limit:
            raise OSError(f"{path.name} is not a regular file of at most {limit} bytes")
        content = tensor_files.read_from(file, status.st_size, path.name)
        return content, _identity(os.fstat(file.fileno()))


def _identity(status: os.stat_result) -> list[int]:
    """The file's inode and its last change (ctime, which no process of the user's can set back): a file rewritten
    or replaced after the partner read it no longer has both."""
    return [status.st_ino, status.st_ctime_ns]


def judge_trial_files(spec: WorkerSpec, references: Records, exact: Records | None) -> dict[str, Any]:
    """The solution's trial files against ``references`` (and ``exact``), on the device, as the message the parent
    reads (``read_trial_judgement``)."""
    if spec.audit_float64 and exact is None:  # the parent holds one, and judges by it
        raise RuntimeError("the float64 evaluation of the trials failed here")
    config = KbenchConfig.model_validate(spec.judging)
    limit = _most_bytes(references)
    paths = [output_path(Path(spec.out_dir), "new", TRIAL, index) for index in range(len(references))]

    def read(path: Path) -> tuple[list[Any] | None, dict[str, Any] | UnreadableOutput]:
        try:
            content, identity = _read_file(path, limit)
        except (OSError, tensor_files.UnreadableTensors) as exc:
            return None, UnreadableOutput(str(exc))
        said = [bytes_digest(content), len(content), *identity]
        try:
            outputs = load_outputs(path, content)
        except UnreadableOutput as exc:
            return said, exc
        return said, {**outputs, "tensors": [t.to(spec.device) for t in outputs["tensors"]]}

    files, loaded = {}, []
    for path, (said, outputs) in zip(paths, read_ahead(paths, read), strict=True):
        files[path.name] = said
        loaded.append(outputs)
    notes: list[str] = []
    comparison, new = compare_loaded(TRIAL, references, loaded, config.tolerance_for, exact, notes, config.accuracy)
    new_error = worst_relative_error(new, exact) if exact else None
    return {"files": files, **outcome_message(comparison, notes), "new_error_fp64": new_error}


def wrong_answers(message: dict[str, Any]) -> bool:
    """Whether the partner's comparison (``judge_trial_files``) found wrong answers in the trials: what the parent
    judges ``incorrect`` before any other check, whatever the timing and the later outputs show (a result that is
    no tensor is another verdict, and is not this)."""
    comparison, _ = read_outcome(message)
    return not comparison.ok and not comparison.not_tensor


def read_trial_judgement(
    message: Any, out_dir: Path, announced: dict[str, tuple[str, int]], count: int
) -> tuple[Comparison, float | None, list[str]] | None:
    """The partner's comparison of the trials (comparison, the solution's float64 error, notes), when it read the
    ``count`` trial files in ``out_dir``, each is the one the solution's worker announced, and none has changed
    since; else None, and the parent compares the files (and finds any that changed). ValueError when the message
    is not one."""
    comparison, notes = read_outcome(message)
    files, new_error = message.get("files"), message.get("new_error_fp64")
    if not isinstance(files, dict) or (new_error is not None and not is_number(new_error)):
        raise ValueError("no files, or a float64 error that is not a number")
    names = [output_path(out_dir, "new", TRIAL, index).name for index in range(count)]
    if sorted(files) != sorted(names) or not all(_unchanged(out_dir / n, files[n], announced.get(n)) for n in names):
        return None
    return comparison, None if new_error is None else float(new_error), notes


def _unchanged(path: Path, said: Any, announced: tuple[str, int] | None) -> bool:
    """The file the partner read is the one announced (digest, size), and still the same file, unchanged."""
    if announced is None or not isinstance(said, list) or said[:2] != [*announced]:
        return False
    try:
        return said[2:] == _identity(path.lstat())
    except OSError:
        return False
