"""Whether CUDA starts in a process confined by kbench.sandbox (variant "full") as it does unconfined ("none");
where it does not, strace (where present) names the calls refused."""
import os, shutil, subprocess, sys, tempfile

CHILD = r'''
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
'''
failed = False
for variant in ["none", "full"]:
    r = subprocess.run([sys.executable, "-c", CHILD, variant], capture_output=True, text=True, timeout=120)
    print(r.stdout.strip(), "|", r.stderr.strip()[-300:], flush=True)
    failed |= "FAILED" in r.stdout
if not failed:
    print("CUDA starts confined: no strace needed")
elif shutil.which("strace"):
    r = subprocess.run(["strace", "-f", "-e", "trace=%file,%network,%ipc,ioctl,socket,connect", "-o", "/tmp/st.txt",
                        sys.executable, "-c", CHILD, "full"], capture_output=True, text=True, timeout=120)
    text = open("/tmp/st.txt").read().splitlines()
    refused = [l for l in text if "EACCES" in l or "EPERM" in l]
    other = [l for l in text if "= -1" in l and not any(e in l for e in ("ENOENT", "ENOTTY", "EACCES", "EPERM"))]
    print("strace refusals:", len(refused)); print("\n".join(refused[-40:]))
    print("other failures:", len(other)); print("\n".join(other[-25:]))
    print("nvidia/socket lines:"); print("\n".join([l for l in text if "nvidia" in l or "connect(" in l][-30:]))
else:
    print("no strace")
