"""Tasks that exercise a world and inject faults into it, for the harness's own tests of its worlds."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from zero3_conformance.worlds.world import RankContext


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


def where_this_rank_talks(ctx: RankContext, payload: Any) -> dict[str, Any]:
    """After a collective: the address the rank was told to meet at, the address of every inet socket the rank
    holds, and the permission bits of the directory of every file it has open for writing under the system's
    temporary directory (its stack file among them)."""
    import stat
    import tempfile

    import psutil
    import torch
    import torch.distributed as dist

    dist.all_reduce(torch.ones(1))
    process = psutil.Process()
    sockets = sorted({c.laddr.ip for c in process.net_connections(kind="inet") if c.laddr} |
                     {c.raddr.ip for c in process.net_connections(kind="inet") if c.raddr})
    temporary = os.path.realpath(tempfile.gettempdir())
    written = [f.path for f in process.open_files() if f.mode in ("w", "a", "r+", "w+", "a+")
               and os.path.realpath(f.path).startswith(temporary + os.sep)]
    return {"master_addr": os.environ.get("MASTER_ADDR"), "socket_addresses": sockets,
            "written_dirs": {os.path.dirname(p): oct(stat.S_IMODE(os.stat(os.path.dirname(p)).st_mode))
                             for p in written}}
