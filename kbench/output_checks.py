"""Reading the outputs a worker announced, and comparing them with the reference's. Trusted side.

A worker announces each output file with the digest of the bytes it wrote; the parent reads each file once,
checks that digest on those bytes and loads the same bytes, so a file rewritten later is refused.
"""

from __future__ import annotations

import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch

from kbench import tensor_files
from kbench.compare import (
    Comparison,
    UnreadableOutput,
    compare_records,
    compare_tensor,
    load_outputs,
    load_record,
    merge,
)
from kbench.config import AccuracyConfig, Tolerance
from kbench.spec import bytes_digest, output_path, state_path


def worker_strings(value: Any) -> list[str]:
    """A list of strings from the worker, or nothing: what arrives on the pipe may have been forged."""
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


class TamperedOutput(UnreadableOutput):
    """A solution output file that is not what the worker announced when it wrote it."""


def read_announced(path: Path, announced: dict[str, tuple[str, int]]) -> tensor_files.Content:
    """A solution file's bytes, only if they are still what the worker announced when it wrote them (digest
    and size): a file rewritten later (by an exit hook, say), replaced by a link or a device, or never
    announced is refused. Read once, then checked and loaded from memory, so what is checked is what is
    loaded; nothing larger than announced is read."""
    if path.name not in announced:
        if path.exists():
            raise TamperedOutput(f"{path.name} was never announced by the worker")
        raise UnreadableOutput(f"no output file {path.name}")
    digest, size = announced[path.name]
    try:
        status = path.lstat()
        if not stat.S_ISREG(status.st_mode) or status.st_size != size:
            raise TamperedOutput(f"{path.name} changed after the worker wrote it")
        content = tensor_files.read_bytes(path, size)
    except (OSError, tensor_files.UnreadableTensors):
        raise TamperedOutput(f"{path.name} was removed after the worker wrote it") from None
    if len(content) != size or bytes_digest(content) != digest:
        raise TamperedOutput(f"{path.name} changed after the worker wrote it")
    return content


def load_announced(path: Path, announced: dict[str, tuple[str, int]]) -> dict[str, Any]:
    return load_outputs(path, read_announced(path, announced))


# The float64 policy without a float64 evaluation of the reference to judge by.
KERNELBENCH_FALLBACK = (
    "accuracy judged by the kernelbench rule (allclose against the fp32 reference): the reference has no float64 "
    "evaluation (integrity.audit_float64 is off, or the audit failed)"
)


# Files read and hashed at once, ahead of the comparison. Reading and hashing let go of the GIL, so on the
# H200 host's 16 cores four readers cut a 22-file judgement's reading from the bulk of its time to a fraction.
READERS = 4
T = TypeVar("T")


def read_ahead(paths: list[Path], read: Callable[[Path], T]) -> Iterator[T]:
    """``read(path)`` of each path, in order, while up to ``READERS`` following files are read in threads. At most
    ``READERS`` + 1 files are held at once. ``read`` returns what went wrong rather than raising it."""
    with ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="kbench-read") as pool:
        reading = deque(pool.submit(read, path) for path in paths[:READERS])
        following = iter(paths[READERS:])
        while reading:
            current = reading.popleft().result()
            path = next(following, None)
            if path is not None:
                reading.append(pool.submit(read, path))
            yield current


def _read_ahead(
    paths: list[Path], announced: dict[str, tuple[str, int]]
) -> Iterator[dict[str, Any] | UnreadableOutput]:
    """Each file's outputs (``load_announced``), or why it cannot be used, in order, read ahead."""

    def read(path: Path) -> dict[str, Any] | UnreadableOutput:
        try:
            return load_announced(path, announced)
        except UnreadableOutput as exc:  # TamperedOutput too
            return exc

    return read_ahead(paths, read)


def load_all(paths: list[Path], announced: dict[str, tuple[str, int]]) -> list[dict[str, Any]]:
    """Every file's outputs (``load_announced``), read ahead; raises the first file's error."""
    loaded = []
    for outputs in _read_ahead(paths, announced):
        if isinstance(outputs, UnreadableOutput):
            raise outputs
        loaded.append(outputs)
    return loaded


def compare_kind(
    out_dir: Path,
    kind: str,
    references: list[dict[str, Any]],
    tolerance_for: Callable[[str], Tolerance],
    announced: dict[str, tuple[str, int]],
    exact: list[dict[str, Any]] | None = None,
    notes: list[str] | None = None,
    files: list[int] | None = None,
    accuracy: AccuracyConfig | None = None,
) -> tuple[Comparison, list[dict[str, Any]]]:
    """Compare each saved solution output of one kind with the reference output the parent holds (the solution's
    files are numbered 0, 1, ... or, for timed calls, by the rounds in ``files``), by ``accuracy``'s policy. The
    float64 rule needs the reference's float64 evaluation of the same calls (``exact``); without it, the
    kernelbench rule (allclose against the fp32 reference) decides, and ``notes`` says so. Outputs the float64
    rule passes but the kernelbench rule would fail are counted in ``notes`` too: the fp32 reference's own
    rounding must not fail a more exact answer, but the difference between the policies should show."""
    paths = [output_path(out_dir, "new", kind, files[index] if files else index) for index in range(len(references))]
    return compare_loaded(kind, references, _read_ahead(paths, announced), tolerance_for, exact, notes, accuracy)


def compare_loaded(
    kind: str,
    references: list[dict[str, Any]],
    outputs: Iterable[dict[str, Any] | UnreadableOutput],
    tolerance_for: Callable[[str], Tolerance],
    exact: list[dict[str, Any]] | None = None,
    notes: list[str] | None = None,
    accuracy: AccuracyConfig | None = None,
) -> tuple[Comparison, list[dict[str, Any]]]:
    """``compare_kind`` on outputs in hand, each loaded or why it could not be, in the references' order: the
    parent's from files, the reference partner's on the device (``kbench.timed_comparison``)."""
    accuracy = accuracy or AccuracyConfig()
    float64_rule = accuracy.policy == "float64"
    if float64_rule and references and not exact and notes is not None and KERNELBENCH_FALLBACK not in notes:
        notes.append(KERNELBENCH_FALLBACK)
    so_far = Comparison(True, "within tolerance", 0.0, 0.0)
    loaded = []
    passed_by_float64: list[str] = []  # why the kernelbench rule fails each output the float64 rule passed
    for index, (ref, new_or_error) in enumerate(zip(references, outputs, strict=False)):
        if isinstance(new_or_error, TamperedOutput):
            return merge(so_far, Comparison(False, f"{kind} {index}: {new_or_error}", tampered=True)), loaded
        if isinstance(new_or_error, UnreadableOutput):
            return merge(so_far, Comparison(False, f"{kind} {index}: {new_or_error}", not_tensor=True)), loaded
        new = new_or_error
        loaded.append(new)
        versus = exact[index] if float64_rule and exact and index < len(exact) else None
        result = compare_records(new, ref, tolerance_for, versus, accuracy.fp32_error_factor)
        if result.ok and result.outside_fp32:
            passed_by_float64.append(f"{kind} {index}: {result.outside_fp32}")
        if not result.ok:
            result.reason = f"{kind} {index}: {result.reason}"
        so_far = merge(so_far, result)
        if not so_far.ok:
            break
    if passed_by_float64 and notes is not None:
        notes.append(
            f"{len(passed_by_float64)} {kind} output(s) passed by the float64 rule that allclose against the fp32 "
            f"reference (the kernelbench policy) fails; first: {passed_by_float64[0]}"
        )
    return so_far, loaded


def compare_state(
    out_dir: Path,
    reference: dict[str, torch.Tensor],
    tolerance_for: Callable[[str], Tolerance],
    announced: dict[str, tuple[str, int]],
) -> str:
    """Empty when ModelNew's buffers after the trials match the reference's; else what differs."""
    try:
        content = read_announced(state_path(out_dir, "new"), announced)
    except UnreadableOutput:
        return "buffers file missing, or changed after the worker wrote it"
    try:
        new = load_record(state_path(out_dir, "new"), content)
    except UnreadableOutput as exc:
        return f"buffers unreadable: {exc}"
    for name, ref in reference.items():
        if name not in new or type(new[name]) is not torch.Tensor:
            return f"buffer {name} missing"
        result = compare_tensor(new[name], ref, tolerance_for)
        if not result.ok:
            return f"buffer {name}: {result.reason}"
    return ""
