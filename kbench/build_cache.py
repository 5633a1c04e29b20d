"""Where ``load_inline`` builds: one folder per (solution source, torch, CUDA, target arch, Python).

An unchanged solution on an unchanged toolchain finds its built extension there and is never rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from kbench.device_kind import on_gpu
from kbench.metadata import gpu_capability


def target_arch(device: str) -> str:
    if not on_gpu(device):
        return "cpu"
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    # The parent computes this too (the build pool): NVML, where there is one, opens no CUDA context.
    major, minor = gpu_capability() or torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def extension_dir(root: Path, source: str, device: str) -> Path:
    key = "\0".join([source, torch.__version__, str(torch.version.cuda), target_arch(device), sys.version.split()[0]])
    return root / "extensions" / hashlib.sha256(key.encode()).hexdigest()[:20]


def has_built_extension(directory: Path) -> bool:
    """Whether ``load_inline`` left a built extension here: ``<name>/<name>.so``, one level down. Deeper ones
    are the compiled kernels of Triton's and Inductor's caches, which a confined worker keeps in this folder too
    (``kbench.sandbox``): they say nothing of the solution's own extension."""
    return directory.is_dir() and any(directory.glob("*/*.so"))
