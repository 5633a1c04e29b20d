"""What the parent tells a worker to do: written as JSON into the job's scratch folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Kinds of saved outputs: correctness trials, the last timed call on each input set, and trials after the
# weights were perturbed. The reference also saves each kind evaluated in float64 (``float64_kind``).
TRIAL, TIMED, PERTURBED = "trial", "timed", "perturbed"


def float64_kind(kind: str) -> str:
    """The kind of the reference's float64 outputs for the same inputs and weights as ``kind``."""
    return f"{kind}_fp64_"


@dataclass
class WorkerSpec:
    problem_path: str
    device: str
    seed: int
    trials: int
    timing: dict[str, Any]
    out_dir: str
    overrides: dict[str, Any] = field(default_factory=dict)
    solution_path: str | None = None
    extensions_root: str | None = None
    perturbation_trials: int = 1
    audit_float64: bool = False
    kernel_census: bool = False
    poison_numel: int = 0  # elements of NaN to fill and free before each checked call
    time_reference: bool = True  # False when the parent has this reference's timings cached
    compile_mode: str | None = None  # also time torch.compile(Model, mode=...) (reference worker)
    judging: dict[str, Any] = field(default_factory=dict)  # tolerances and accuracy (kbench.timed_comparison)
    confined: bool = False  # the solution worker confines itself before any solution code runs (kbench.sandbox)

    def weights_seed(self) -> int:
        return self.seed

    def trial_seeds(self) -> list[int]:
        return [self.seed + 1 + t for t in range(self.trials)]

    def timing_seed(self, input_set: int) -> int:
        # Far from the trial seeds, so timed inputs are never the inputs that were checked.
        return self.seed + 100_003 + input_set

    def perturbation_seed(self) -> int:
        return self.seed + 7_919

    def perturbed_trial_seeds(self) -> list[int]:
        return [self.seed + 50_021 + t for t in range(self.perturbation_trials)]

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self)), encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> WorkerSpec:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


# An output file's digest is a two-level SHA-256 tree over segments of this size: the worker hashes a file's
# segments on several threads while it writes the file (one SHA-256 stream runs at about 1 GB/s, a tenth of a second
# per 134 MB output, fourteen outputs a job); the parent, which reads several files at once, hashes each in turn.
SEGMENT_BYTES = 16 << 20


def segments(pieces: Sequence[bytes | memoryview]) -> Iterator[list[memoryview]]:
    """The pieces' bytes, one after another, cut into ``SEGMENT_BYTES`` segments: each as the slices of the pieces
    it spans (no copies)."""
    current: list[memoryview] = []
    room = SEGMENT_BYTES
    for piece in pieces:
        view = memoryview(piece).cast("B")
        while len(view):
            part, view = view[:room], view[room:]
            current.append(part)
            room -= len(part)
            if not room:
                yield current
                current, room = [], SEGMENT_BYTES
    if current:
        yield current


def segment_digest(parts: list[memoryview]) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)  # lets go of the GIL: segments hash side by side on threads
    return digest.digest()


def tree_digest(segment_digests: list[bytes]) -> str:
    return hashlib.sha256(b"".join(segment_digests)).hexdigest()


def bytes_digest(data: bytes | memoryview | bytearray | mmap.mmap) -> str:
    """An output file's digest (see ``SEGMENT_BYTES``): the worker announces it on writing, the parent checks it."""
    return tree_digest([segment_digest(parts) for parts in segments([memoryview(data)])])


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def output_path(out_dir: Path, role: str, kind: str, index: int) -> Path:
    return out_dir / f"{role}_{kind}{index}.kbt"


def state_path(out_dir: Path, role: str) -> Path:
    return out_dir / f"{role}_state.kbt"
