"""Where a profiled corpus run spent its CPU time, by process role and function (issue #18).

Reads the raw output of ``py-spy record --subprocesses --threads --format raw`` (``measure.sh`` writes it when
``PROFILE=1``): one line per distinct stack, ``frame;frame;...;frame COUNT``, each stack rooted at the processes
that led to it (``process PID:"COMMAND"``). Prints, per role (the parent ``kbench bench``, the solution workers,
the reference partners, the reference workers, the build workers, compilers), the samples it took and the
functions with the most samples, counted once per stack (inclusive) and at the top of the stack (self).

    python benchmarks/corpus/profile_summary.py warm.pyspy.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

PROCESS = re.compile(r'^process \d+:"(?P<command>.*)"$')
ROLES = (
    ("kbench.untrusted.worker", "solution worker"),
    ("kbench.reference_partner", "reference partner"),
    ("kbench.reference_worker", "reference worker"),
    ("kbench.untrusted.build_worker", "build worker"),
)


def role(commands: list[str]) -> str:
    """The innermost kbench process a stack ran in; a process started by it (a compiler, ninja) keeps its name."""
    for command in reversed(commands):
        for module, name in ROLES:
            if module in command:
                return name
    return "parent" if commands else "unknown"


def read(path: Path) -> dict[str, tuple[Counter[str], Counter[str], int]]:
    """Per role: samples per function, inclusive and self, and all samples."""
    inclusive: dict[str, Counter[str]] = defaultdict(Counter)
    own: dict[str, Counter[str]] = defaultdict(Counter)
    total: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue  # a command line with a newline in it: its rest is on the next line
        frames = stack.split(";")
        commands = [m.group("command") for f in frames if (m := PROCESS.match(f))]
        calls = [f for f in frames if not PROCESS.match(f) and not f.startswith("thread ")]
        who = role(commands)
        total[who] += int(count)
        for frame in set(calls):
            inclusive[who][frame] += int(count)
        if calls:
            own[who][calls[-1]] += int(count)
    return {who: (inclusive[who], own[who], total[who]) for who in total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    roles = read(args.raw)
    for who, (inclusive, own, total) in sorted(roles.items(), key=lambda item: -item[1][2]):
        print(f"\n== {who}: {total} samples")
        for title, counts in (("inclusive", inclusive), ("self", own)):
            print(f"-- {title}")
            for frame, count in counts.most_common(args.top):
                print(f"{count:8d} {100 * count / total:5.1f} %  {frame[:150]}")


if __name__ == "__main__":
    main()
