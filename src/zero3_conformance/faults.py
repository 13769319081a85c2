"""Tasks that exercise a world and inject faults into it, for the harness's own tests of its worlds."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from .world import RankContext


def all_reduce_rank_sum(ctx: RankContext, payload: Any) -> float:
    import torch
    import torch.distributed as dist

    value = torch.tensor([float(ctx.rank + 1)])
    dist.all_reduce(value)
    return float(value)


def hang_on_rank(ctx: RankContext, rank: int) -> None:
    """`rank` never reaches the barrier the others wait in."""
    import torch.distributed as dist

    if ctx.rank == rank:
        time.sleep(3600)
    dist.barrier()


def raise_on_rank(ctx: RankContext, rank: int) -> None:
    """`rank` raises while the others wait in a barrier."""
    import torch.distributed as dist

    if ctx.rank == rank:
        raise ValueError(f"injected failure on rank {rank}")
    dist.barrier()


def kill_rank(ctx: RankContext, rank: int) -> None:
    """`rank` dies of SIGSEGV while the others wait in a barrier."""
    import torch.distributed as dist

    if ctx.rank == rank:
        os.kill(os.getpid(), signal.SIGSEGV)
    dist.barrier()
