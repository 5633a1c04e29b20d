"""What the parent tells a worker to do: written as JSON into the job's scratch folder."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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

    def weights_seed(self) -> int:
        return self.seed

    def trial_seed(self, trial: int) -> int:
        return self.seed + 1 + trial

    def timing_seed(self, input_set: int) -> int:
        # Far from the trial seeds, so timed inputs are never the inputs that were checked.
        return self.seed + 100_003 + input_set

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self)), encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> WorkerSpec:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def output_path(out_dir: Path, role: str, trial: int) -> Path:
    return out_dir / f"{role}_trial{trial}.pt"
