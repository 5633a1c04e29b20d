"""Which part of kbench.sandbox's confinement stops CUDA from starting (error 304 on the H100 machine): CUDA started
under variants of the confinement, each in a fresh process, and the calls refused under the full one (an LD_PRELOAD
shim, denied.c, where a C compiler exists; the machine has no strace)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
CHILD = r"""
import os, sys, tempfile
from pathlib import Path
from kbench import sandbox
variant = sys.argv[1]
extra = {"proc": ["/proc"], "sys": ["/sys"], "tmp": ["/tmp", "/var/tmp", os.path.expanduser("~")],
         "everywhere": ["/"], "everywhere_noscope": ["/"]}.get(variant, [])
if "noscope" in variant or variant == "signalscope":
    sandbox._SCOPE_ABSTRACT_UNIX_SOCKET = 0
if "noscope" in variant or variant == "unixscope":
    sandbox._SCOPE_SIGNAL = 0
if variant != "none":
    sandbox.confine([Path(tempfile.mkdtemp()), *map(Path, extra)])
import torch
try:
    print(variant, "cuda ok", torch.cuda.device_count(), torch.zeros(1, device="cuda").item(), flush=True)
except Exception as e:
    print(variant, "cuda FAILED", str(e)[:120], flush=True)
"""
VARIANTS = ["none", "full", "noscope", "unixscope", "signalscope", "proc", "sys", "tmp", "everywhere",
            "everywhere_noscope"]  # fmt: skip


def run(variant: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, "-c", CHILD, variant], capture_output=True, text=True, timeout=120, env=env)
    return done.stdout.strip() + " | " + "\n".join(done.stderr.strip().splitlines()[-60:])


def main() -> None:
    for variant in sys.argv[1:] or VARIANTS:
        print(run(variant).split(" | ")[0], flush=True)
    compiler = shutil.which("gcc") or shutil.which("cc")
    if sys.argv[1:]:
        return
    if compiler is None:
        print("no C compiler: no shim")
        return
    shim = Path("/tmp/denied.so")
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(shim), str(HERE / "denied.c"), "-ldl"], check=True)
    print("full, with the shim:\n" + run("full", {**os.environ, "LD_PRELOAD": str(shim)}), flush=True)


if __name__ == "__main__":
    main()
