"""Confining an untrusted worker with Linux Landlock: it may read anything, write only where its job needs to.

Workers run as kbench's user, so without this a solution could rewrite kbench's own source, its caches (reference
timings, other solutions' builds), the reference's files beside its own, or reach the trusted processes through
``/proc/<pid>/fd`` and signals. A confined worker (and every process it starts) can create, change or remove files
only beneath the folders it is given, and cannot ptrace, open ``/proc/<pid>/fd`` of, or (Landlock ABI 6) signal a
process outside its own confinement: the parent, the reference partner, other jobs' workers.

Landlock is unprivileged (Linux 5.13 and later), and a confinement can never be lifted by the process it holds.
Reads, execution and device ioctls are left alone: a worker imports torch from anywhere and drives its GPU. It
may also write its own ``/proc/<pid>`` files: CUDA names the threads it starts through
``/proc/self/task/<tid>/comm``, and its start fails (error 304) where it cannot.
Trusted side; the untrusted workers call ``confine_worker`` before any solution code runs.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from pathlib import Path

# Landlock's system calls have one number on every architecture.
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Access rights (include/uapi/linux/landlock.h), by the ABI that brought them.
_WRITE_FILE = 1 << 1
_REMOVE_DIR, _REMOVE_FILE = 1 << 4, 1 << 5
_MAKE = sum(1 << bit for bit in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
_REFER = 1 << 13  # ABI 2: moving a file between folders
_TRUNCATE = 1 << 14  # ABI 3
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

# Beneath /dev: GPU device files are opened for writing, and /dev/shm is where shared memory lives.
DEVICE_FILES = Path("/dev")
# The confined process's own /proc/<pid> folder, held open for its life. Landlock's rule names the folder's inode,
# and procfs makes a new one when an unused folder is dropped from the dentry cache and looked up again; an open
# descriptor keeps the folder in the cache, so the rule keeps matching.
_own_process_folder: int | None = None


class SandboxError(Exception):
    """The worker could not be confined; it must not run solution code then."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]  # fmt: skip


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where there is none (an older kernel, Landlock disabled, not Linux)."""
    try:
        found = _libc().syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(0, int(found))


def _write_rights(abi: int) -> int:
    rights = _WRITE_FILE | _REMOVE_DIR | _REMOVE_FILE | _MAKE
    rights |= _REFER if abi >= 2 else 0
    rights |= _TRUNCATE if abi >= 3 else 0
    return rights


def _check(result: int, what: str) -> int:
    if result < 0:
        raise SandboxError(f"{what} failed: {os.strerror(ctypes.get_errno())}")
    return result


def confine(writable: list[Path]) -> int:
    """Confine this process, and all it starts from now on, to writing beneath ``writable`` (folders, each made
    if missing) and ``/dev``. Returns the Landlock ABI used; raises ``SandboxError`` where it cannot confine."""
    abi = landlock_abi()
    if abi < 1:
        raise SandboxError("this kernel has no Landlock (Linux 5.13 or later, with Landlock enabled, is needed)")
    libc, rights = _libc(), _write_rights(abi)
    attr = _RulesetAttr(rights, 0, _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= 6 else 0)
    size = ctypes.sizeof(attr) if abi >= 6 else ctypes.sizeof(ctypes.c_uint64)  # older kernels know less of it
    ruleset = _check(
        libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0), "landlock_create_ruleset"
    )
    try:
        for folder in [*writable, DEVICE_FILES]:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder, os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY)
            try:
                _add_rule(libc, ruleset, fd, rights, str(folder))
            finally:
                os.close(fd)
        _allow_own_process_folder(libc, ruleset, abi)
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        _check(libc.syscall(_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _add_rule(libc: ctypes.CDLL, ruleset: int, fd: int, rights: int, what: str) -> None:
    rule = _PathBeneathAttr(rights, fd)
    _check(libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0), f"a rule for {what}")


def _allow_own_process_folder(libc: ctypes.CDLL, ruleset: int, abi: int) -> None:
    """Writes to this process's own ``/proc/<pid>`` files (its threads' names); nothing of another process's. Opened
    for writing as ``fopen(path, "w")`` does, too: with ``O_TRUNC``, which Landlock (ABI 3) holds apart."""
    global _own_process_folder
    if _own_process_folder is None:
        _own_process_folder = os.open("/proc/self", os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY)
    rights = _WRITE_FILE | (_TRUNCATE if abi >= 3 else 0)
    _add_rule(libc, ruleset, _own_process_folder, rights, "this process's /proc folder")


def confine_worker(writable: list[Path], scratch: Path, cache: Path) -> int:
    """``confine`` a worker to ``writable``, after pointing its libraries' writes there: temporary files to
    ``scratch``, Triton's and Inductor's compiled kernels and CUDA's JIT cache under ``cache`` (the solution's own
    build folder, so they outlive the run as its extension does), instead of the user's shared folders."""
    os.environ.update(
        {
            "TMPDIR": str(scratch),
            "TRITON_CACHE_DIR": str(cache / "triton"),
            "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
            "CUDA_CACHE_PATH": str(cache / "nv"),
        }
    )
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    return confine(writable)
