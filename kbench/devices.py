"""Devices a job can run on: the CPU, or one GPU of this host, as objects rather than strings.

A job's workers see only their own GPU (``worker_env``): inside them it is always ``cuda`` (device 0), so the
worker protocol keeps its one-word device ("cuda" or "cpu"), while the parent knows which physical GPU that was.
GPUs are numbered as NVML numbers them (PCI bus order), and workers are pointed at theirs by UUID, so the GPU a
result names is the one that ran it whatever ``CUDA_DEVICE_ORDER`` says.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field

from kbench.device_kind import on_gpu
from kbench.metadata import nvml_session


class DeviceError(Exception):
    """A device or GPU list the user asked for that this host does not have; the message says what it has."""


@dataclass(frozen=True)
class Device:
    kind: str  # "cpu" or "cuda": what a worker runs its tensors on
    index: int | None = None  # the GPU's NVML index on its host
    name: str = ""
    uuid: str = ""  # the GPU's, which CUDA_VISIBLE_DEVICES accepts
    host: str = field(default_factory=socket.gethostname)
    # Whether workers are confined to it (worker_env). Not for the one GPU of a host run with no --gpus: its
    # workers see that GPU anyway, and CUDA then finds it as it always did.
    confined: bool = True

    @property
    def is_gpu(self) -> bool:
        return on_gpu(self.kind)

    @property
    def label(self) -> str:
        """How results and progress name it: ``cuda:2``, or ``cpu``."""
        return f"cuda:{self.index}" if self.is_gpu and self.index is not None else self.kind

    @property
    def described(self) -> str | None:
        """What a result records of the GPU that ran it; None on the CPU."""
        if not self.is_gpu:
            return None
        return " ".join(filter(None, [self.label, self.name, f"@ {self.host}"]))

    def worker_env(self) -> dict[str, str]:
        """What a worker's environment needs so that it sees this GPU and no other: a solution on one GPU must
        not reach the GPU another job is timed on. Empty for the CPU and for a GPU not found through NVML."""
        if not self.is_gpu or self.index is None or not self.confined:
            return {}
        return {"CUDA_VISIBLE_DEVICES": self.uuid or str(self.index), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


CPU = Device("cpu")


def visible_gpus() -> list[Device]:
    """This host's GPUs from NVML (no CUDA context is opened in the parent), in NVML's order. Where
    CUDA_VISIBLE_DEVICES already limits what this process may use, only those are listed. Empty without NVML."""
    found: list[Device] = []
    with nvml_session() as nvml:
        if nvml is None:
            return found
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            found.append(
                Device("cuda", index, str(nvml.nvmlDeviceGetName(handle)), str(nvml.nvmlDeviceGetUUID(handle)))
            )
    allowed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if allowed is None:
        return found
    wanted = [item.strip() for item in allowed.split(",") if item.strip()]
    return [gpu for gpu in found if str(gpu.index) in wanted or any(gpu.uuid.startswith(w) for w in wanted)]


def select_gpus(spec: str | None, available: list[Device]) -> list[Device]:
    """The GPUs a run uses: ``None`` or ``all`` for every one, or NVML indices as ``0,2``. An index this host
    does not have, or one named twice, is an error that lists what there is."""
    if not available:
        raise DeviceError("no GPU found through NVML on this host (is the driver loaded? is nvidia-ml-py installed?)")
    if spec is None or spec.strip() == "all":
        return list(available)
    by_index = {gpu.index: gpu for gpu in available}
    have = ", ".join(f"{gpu.index} ({gpu.name})" for gpu in available)
    chosen: list[Device] = []
    for item in spec.split(","):
        try:
            index = int(item.strip())
        except ValueError:
            raise DeviceError(f"--gpus takes GPU numbers such as 0,2 or 'all', not '{spec}'") from None
        if index not in by_index:
            raise DeviceError(f"--gpus {spec}: this host has no GPU {index}; it has {have}")
        if by_index[index] in chosen:
            raise DeviceError(f"--gpus {spec}: GPU {index} is named twice")
        chosen.append(by_index[index])
    return chosen


def devices_for(kind: str, gpus: str | None = None, available: list[Device] | None = None) -> list[Device]:
    """The devices a run of ``kind`` uses. On the CPU there is one: two jobs timed on the same cores at once
    would slow each other. On CUDA, the GPUs chosen; a host whose GPUs NVML cannot list gets one GPU that the
    workers find as CUDA sees it."""
    if not on_gpu(kind):
        if gpus is not None:
            raise DeviceError("--gpus is for --device cuda")
        return [CPU]
    found = visible_gpus() if available is None else available
    if not found and gpus is None:
        return [Device("cuda")]
    if len(found) == 1 and gpus is None:
        return [dataclasses.replace(found[0], confined=False)]
    return select_gpus(gpus, found)
