"""Whether CUDA starts in a process confined by kbench.sandbox (variant "full") as it does unconfined ("none");
where it does not, strace (where present) names the calls refused."""

import shutil
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import sys, tempfile
from pathlib import Path
from kbench import sandbox
variant = sys.argv[1]
writable = [Path(tempfile.mkdtemp())]
if variant != "none":
    print("abi", sandbox.confine(writable), flush=True)
import torch
try:
    print(variant, "cuda ok", torch.cuda.device_count(), torch.zeros(1, device="cuda").item(), flush=True)
except Exception as e:
    print(variant, "cuda FAILED", str(e)[:200], flush=True)
"""


def main() -> None:
    failed = False
    for variant in ["none", "full"]:
        done = subprocess.run([sys.executable, "-c", CHILD, variant], capture_output=True, text=True, timeout=120)
        print(done.stdout.strip(), "|", done.stderr.strip()[-300:], flush=True)
        failed |= "FAILED" in done.stdout
    if not failed:
        print("CUDA starts confined: no strace needed")
        return
    if not shutil.which("strace"):
        print("no strace")
        return
    trace = Path("/tmp/st.txt")
    traced = ["strace", "-f", "-e", "trace=%file,%network,%ipc,ioctl", "-o", str(trace)]
    subprocess.run([*traced, sys.executable, "-c", CHILD, "full"], capture_output=True, text=True, timeout=120)
    lines = trace.read_text().splitlines()
    refused = [line for line in lines if "EACCES" in line or "EPERM" in line]
    print("strace refusals:", len(refused))
    print("\n".join(refused[-40:]))


if __name__ == "__main__":
    main()
