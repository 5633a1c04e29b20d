"""What every recipe's renderers return, and the options they take."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KernelOptions:
    fn: str  # the bound function's name (and the kernel's prefix)
    tag: str  # names the solution in a comment, so that no two sources are the same
    block: int  # threads per CUDA block, or Triton's BLOCK_SIZE
    fuse_mm: bool = False  # GEMM epilogues: the GEMM runs inside the extension / before the Triton kernel
    hang: bool = False  # the solution meant to hang (pointwise CUDA only)


@dataclass(frozen=True)
class CudaKernel:
    source: str  # the CUDA C++ text given to load_inline
    decl: str  # the C++ declaration of the bound function (cpp_sources)
    function: str
    forward: list[str]  # ModelNew.forward's lines, calling ``ext.<function>``


@dataclass(frozen=True)
class TritonKernel:
    code: str  # module-level code: BLOCK_SIZE, the @triton.jit kernel and its host function
    forward: list[str]  # ModelNew.forward's lines, calling the host function


def indent(lines: list[str], spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line else "" for line in lines)


def wrap(items: list[str], head: str, tail: str, indent_by: int = 4, width: int = 110) -> str:
    """``head + ", ".join(items) + tail``, the items carried over to continuation lines when that is long."""
    one_line = head + ", ".join(items) + tail
    if len(one_line) <= width:
        return one_line
    lines, current = [], " " * indent_by
    for item in items:
        piece = item + ", "
        if len(current) + len(piece) > width and current.strip():
            lines.append(current.rstrip())
            current = " " * indent_by
        current += piece
    lines.append(current.rstrip().rstrip(",") + tail)
    return head.rstrip() + "\n" + "\n".join(lines)
