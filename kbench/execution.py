"""Loading a problem, seeding models and inputs, and saving outputs: the steps both workers share.

Runs inside worker processes only; the parent never calls this.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from kbench import tensor_files
from kbench.channel import Channel
from kbench.device_kind import on_gpu
from kbench.spec import TIMED, WorkerSpec, output_path, state_path

# Bound before any solution is imported, so replacing torch.manual_seed cannot change kbench's inputs.
_manual_seed = torch.manual_seed


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


def load_problem(spec: WorkerSpec) -> ModuleType:
    module = load_module(Path(spec.problem_path), "kbench_problem")
    # get_inputs()/get_init_inputs() read these globals when called, so setting them resizes the problem.
    for name, value in spec.overrides.items():
        setattr(module, name, value)
    return module


def manual_seed(seed: int) -> None:
    _manual_seed(seed)


def to_device(value: Any, device: str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device) for v in value)
    return value


def clone_inputs(values: list[Any]) -> list[Any]:
    return [v.clone() if isinstance(v, torch.Tensor) else v for v in values]


def seeded_inputs(problem: ModuleType, seed: int, device: str, made_on: str | None = None) -> list[Any]:
    """``get_inputs()`` seeded, made on the device where the problem's factories allow it (torch's default device
    is set around the call): on a GPU a 64M-element input costs microseconds, not the CPU's fraction of a second
    per trial. ``made_on="cpu"`` makes them on the CPU instead. Tensors are moved to ``device``. The same seed
    gives the same values in every process on the same kind of device and torch: the reference's and the
    solution's workers make the same inputs for every trial and timed round."""
    _manual_seed(seed)
    with torch.device(made_on or device):
        inputs = list(problem.get_inputs())
    return list(to_device(inputs, device))


def seeded_model(problem: ModuleType, model_class: type, seed: int, device: str) -> torch.nn.Module:
    """Seed, then build ``model_class(*get_init_inputs())`` on the device."""
    _manual_seed(seed)
    init_inputs = list(problem.get_init_inputs())
    return model_class(*init_inputs).to(device)


def start_cpu_threads() -> None:
    """Start torch's intra-op thread pool now, with as many threads as it may use: it starts at the first CPU
    operation large enough to split, which on a GPU can be a perturbed trial's inputs (made on the CPU) after the
    solution worker's thread census took its baseline, and new threads there are taken for the solution's."""
    torch.ones(torch.get_num_threads() * 65536).mul_(2)  # each thread gets more than at::parallel_for's grain


def synchronize(device: str) -> None:
    if on_gpu(device):
        torch.cuda.synchronize()


def pack_outputs(output: Any, on_cpu: bool = True) -> dict[str, Any]:
    """Outputs as plain CPU tensors for the parent (``kbench.tensor_files`` writes them); left where they are
    when not ``on_cpu``.

    Anything that is not exactly ``torch.Tensor`` (a subclass can compute lazily, or lie) is not converted:
    it is reported by type name so the parent can reject it.
    """
    items = list(output) if isinstance(output, tuple | list) else [output]
    tensors: list[torch.Tensor] = []
    for item in items:
        if type(item) is not torch.Tensor or item.layout != torch.strided:
            kind = type(item).__qualname__ if type(item) is not torch.Tensor else f"{item.layout} tensor"
            return {"structure": type(output).__name__, "not_tensor": kind, "tensors": []}
        tensors.append(item.detach().to("cpu", copy=True) if on_cpu else item.detach())
    return {"structure": "tensor" if isinstance(output, torch.Tensor) else "sequence", "tensors": tensors}


def save_record(record: dict[str, Any], path: Path, channel: Channel) -> None:
    """A record of tensors (moved to the CPU as they are written) and JSON values, for the parent."""
    channel.write_announced(path, tensor_files.encode(record))


def save_outputs(output: Any, path: Path, channel: Channel) -> None:
    save_record(pack_outputs(output), path, channel)


# Where the perturbed trials' inputs are made, in the reference's worker and the solution's alike: on the CPU. They
# run after the timing turns, where a failed CUDA-graph capture (graph timing mode) can leave the solution's CUDA
# generator unusable outside a capture ("Offset increment outside graph capture"), which made the solution fail
# there on the H200; CPU-made inputs are the same in both processes whatever happened in the turns.
PERTURBED_INPUTS_ON = "cpu"


def run_calls(
    call: Callable[[list[Any]], Any],
    problem: ModuleType,
    spec: WorkerSpec,
    seeds: list[int],
    role: str,
    kind: str,
    channel: Channel,
    made_on: str | None = None,
) -> None:
    """One call per seed on fresh seeded inputs (each call gets its own clone, made on ``made_on`` or the
    device), outputs saved for the parent."""
    out_dir = Path(spec.out_dir)
    for index, seed in enumerate(seeds):
        inputs = seeded_inputs(problem, seed, spec.device, made_on)
        with torch.no_grad():
            output = call(clone_inputs(inputs))
        synchronize(spec.device)
        save_outputs(output, output_path(out_dir, role, kind, index), channel)


def save_timed_outputs(outputs: list[Any], spec: WorkerSpec, role: str, channel: Channel, kind: str = TIMED) -> None:
    for index, output in enumerate(outputs):
        save_outputs(output, output_path(Path(spec.out_dir), role, kind, index), channel)


def save_state(state: dict[str, torch.Tensor], spec: WorkerSpec, role: str, channel: Channel) -> None:
    save_record(state, state_path(Path(spec.out_dir), role), channel)


def timing_input_sets(problem: ModuleType, spec: WorkerSpec) -> list[list[Any]]:
    count = int(spec.timing["input_sets"])
    return [seeded_inputs(problem, spec.timing_seed(k), spec.device) for k in range(count)]


def to_float64(values: list[Any]) -> list[Any]:
    return [v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for v in values]


def tensor_bytes(values: Any) -> int:
    items = values if isinstance(values, list | tuple) else [values]
    return sum(v.numel() * v.element_size() for v in items if isinstance(v, torch.Tensor))


def describe_device(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"device": device, "torch": torch.__version__, "torch_cuda": torch.version.cuda}
    if on_gpu(device):
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info.update(
            gpu_name=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            total_memory_bytes=props.total_memory,
            l2_cache_bytes=getattr(props, "L2_cache_size", None),
        )
    else:
        info["cpu_threads"] = torch.get_num_threads()
    return info
