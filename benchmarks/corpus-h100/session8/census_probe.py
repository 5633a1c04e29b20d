"""Where the kernel census's ~1-1.4 s per job goes: a fresh process, a small model, the census's own steps timed."""

import time

import torch

from kbench.untrusted.census import kernel_census

marks = []


def mark(name: str, since: float) -> float:
    now = time.perf_counter()
    marks.append(f"{name}: {now - since:.3f} s")
    return now


start = time.perf_counter()
x = torch.randn(4096, 4096, device="cuda")
torch.cuda.synchronize()
t = mark("cuda init + input", start)
model = torch.nn.GELU()
model(x)
torch.cuda.synchronize()
t = mark("first call", t)
from torch.profiler import ProfilerActivity, profile  # noqa: E402

t = mark("import profiler", t)
for attempt in range(3):
    prof = profile(activities=[ProfilerActivity.CUDA])
    prof.__enter__()
    t = mark(f"[{attempt}] profile enter", t)
    with torch.no_grad():
        model(x)
        torch.cuda.synchronize()
    t = mark(f"[{attempt}] call", t)
    prof.__exit__(None, None, None)
    t = mark(f"[{attempt}] profile exit", t)
    rows = prof.key_averages()
    t = mark(f"[{attempt}] key_averages ({len(rows)} rows)", t)
rows = kernel_census(lambda *a: model(*a), [x], "")
t = mark("kernel_census once more", t)
print("\n".join(marks))
