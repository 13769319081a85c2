"""The cell a run belongs to (clause E1): library versions, backend, device, harness version."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from . import __version__

LIBRARIES = ("torch", "deepspeed", "transformers", "accelerate")

# A matrix cell's run directory holds its cell file (RunDir.CELL): whether its environment installed and
# imported, and how the run ended (one of these statuses).
NOT_INSTALLABLE, NOT_IMPORTABLE, COMPLETE, RUN_FAILED = "NOT_INSTALLABLE", "NOT_IMPORTABLE", "COMPLETE", "RUN_FAILED"
# A run directory whose run did not record its end (killed, or still running): see RunDir.completion.
PARTIAL = "PARTIAL"
# The run was launched across nodes and this node's ranks served another node's rank 0, which holds the records.
SERVED = "SERVED"


def installed_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe_cell(backend: str, device: str) -> dict[str, Any]:
    cell: dict[str, Any] = {"python": platform.python_version()}
    cell.update({lib: installed_version(lib) for lib in LIBRARIES})
    cell.update(backend=backend, device=device, harness=__version__)
    return cell


def local_device() -> tuple[str, str]:
    """(backend, device name) the worlds of this machine use: NCCL on CUDA GPUs, else gloo on CPU."""
    import torch

    if torch.cuda.is_available():
        return "nccl", torch.cuda.get_device_name(0)
    return "gloo", f"cpu ({platform.processor() or platform.machine()})"


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cell_label(cell: dict[str, Any]) -> str:
    """The cell's name; a launched world's shape is part of it, so that a launched cell and a self-started one
    of the same stack are two cells of a report."""
    return (
        f"py{cell['python']}-torch{cell['torch']}-ds{cell['deepspeed']}-tf{cell['transformers']}"
        f"-acc{cell['accelerate']}-{cell['backend']}{topology_suffix(cell)}"
    )


def topology_suffix(cell: dict[str, Any]) -> str:
    """`-<nodes>x<ranks per node>ranks` for a launched world's cell; empty for a world the harness started."""
    return f"-{cell['nodes']}x{cell['ranks_per_node']}ranks" if "nodes" in cell else ""
