"""Where DeepSpeed's JIT-built ops go: one directory per build of the stack.

torch builds a JIT op (DeepSpeed's shared-memory comm op, on every world's first start) under
TORCH_EXTENSIONS_DIR, by default one directory per Python and accelerator (`~/.cache/torch_extensions/py311_cpu`)
that every deepspeed release shares. Two environments with different releases then rebuild the same op over
each other, and a world of one loads the other's (`module 'deepspeed_shm_comm' has no attribute
'vector_kernel_level'`). Where TORCH_EXTENSIONS_DIR is unset, the harness sets it, for itself and every process
it starts, to a directory of torch's default root keyed by Python, torch, deepspeed and accelerator.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from .cell import installed_version

ENV = "TORCH_EXTENSIONS_DIR"
# Where a process failed on the op rather than on anything else: the traces a load or a build leaves.
_OP_TRACES = ("op_builder", "cpp_extension", "shm_comm", "torch_extensions")


def accelerator() -> str:
    """The accelerator DeepSpeed builds for: DS_ACCELERATOR where set (the harness's gloo worlds set cpu), else
    cuda where torch sees a GPU, else cpu."""
    if os.environ.get("DS_ACCELERATOR"):
        return os.environ["DS_ACCELERATOR"]
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def keyed_dir() -> Path:
    """This stack's own directory under torch's default root."""
    from torch.utils.cpp_extension import get_default_build_root

    key = (f"py{sys.version_info.major}{sys.version_info.minor}-torch{installed_version('torch')}"
           f"-deepspeed{installed_version('deepspeed')}-{accelerator()}")
    return Path(get_default_build_root()) / re.sub(r"[^\w.+-]", "_", key)


def use_own_op_cache() -> Path:
    """The directory the ops of this process and of every process it starts after are built in: the
    TORCH_EXTENSIONS_DIR already set (a tox cell's, a user's), else this stack's own, which it sets."""
    if not os.environ.get(ENV):
        os.environ[ENV] = str(keyed_dir())
    return Path(os.environ[ENV])


def op_fault(text: str) -> str | None:
    """One line naming the op cache, where `text` (a failure's error and traceback) shows the process failed on
    loading or building a JIT op; None otherwise."""
    if not any(trace in text for trace in _OP_TRACES):
        return None
    where = os.environ.get(ENV) or "torch's default directory"
    return (f"DeepSpeed's JIT-built op in {where} failed to build or load (a build of another deepspeed release, or "
            f"one cut short?): remove that directory, or give this environment a {ENV} of its own")


STALE_LOCK_S = 15 * 60  # the DeepSpeed op builds in about a minute; a lock this old has no builder left


def clear_stale_build_locks(max_age_s: float = STALE_LOCK_S) -> list[Path]:
    """torch builds a JIT op (DeepSpeed's shm comm op, on every world's first start) under a file `lock` in
    the op's build directory. Up to torch 2.13 the file's mere existence means "held": a build killed
    midway leaves it, and so does torch 2.14, which holds an OS lock on the same file and leaves the file
    behind. Either way every later build by torch <= 2.13 then waits forever, and every world start times
    out. Removes lock files older than any build takes that no process holds an OS lock on."""
    import fcntl
    import time

    root = use_own_op_cache()  # the directory this run's worlds build in
    removed = []
    for lock in root.glob("*/*/lock"):
        try:
            if time.time() - lock.stat().st_mtime <= max_age_s:
                continue
            with open(lock, "rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while a build holds it
                lock.unlink()
            removed.append(lock)
        except OSError:
            continue  # held by a build right now, gone already, or not ours to remove
    return removed
