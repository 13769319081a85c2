"""Worlds a launcher started (torchrun, the deepspeed launcher, srun, mpirun): the harness runs inside them.

Every process of such a world runs `zero3-conformance run`. Rank 0 plans the run, writes the records and
hands each task to the other ranks, which serve tasks until rank 0 tells them to stop and then exit with
its status. Tasks and replies travel through the process group's key-value store, never through a
collective, so that a rank stuck in a collective, or one that raised, cannot hold up the messages that say
so. Each rank runs a task in a thread of its own while its main thread keeps answering rank 0.

The harness cannot start such a world again. After a fault that leaves the process group unusable (a task
that timed out, or ranks still inside a task that another rank left), the world is `broken`: the remaining
cases are not run, and every rank exits once rank 0 has written what it has.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import itertools
import os
import pickle
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Callable

from ..op_cache import op_fault, use_own_op_cache
from ..rundir import RunDir
from .world import RankContext, RankReply, TaskOutcome, WorldStartError, collect, gloo_environment, run_task

POLL_S = 0.05
# Ranks still inside a task another rank left get this long to finish it (a started world's get 5 s): a
# world that cannot be replaced is worth a longer wait for a slow rank.
STRAGGLER_GRACE_S = 30.0
STACKS_WAIT_S = 3.0  # how long rank 0 waits for the other ranks' stacks after a timeout
GOODBYE_WAIT_S = 10.0  # how long rank 0 keeps the store up for ranks still reading its last message
JOIN_TIMEOUT = timedelta(minutes=30)

# Where each launcher puts a process's place in the world: rank, world size, local rank, and the ranks on
# its node (the first of these names that is set). torch's variables (RANK, WORLD_SIZE, ...) are torchrun's,
# the deepspeed launcher's and any env:// launch's.
LAUNCHER_VARIABLES = {
    "torch": ("RANK", "WORLD_SIZE", "LOCAL_RANK", ("LOCAL_WORLD_SIZE", "LOCAL_SIZE")),
    "srun": ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", ("SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE")),
    "mpirun": ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
               ("OMPI_COMM_WORLD_LOCAL_SIZE",)),
}


# What a launcher sets besides: its own bookkeeping, and where srun's or mpirun's world is.
_OTHER_WORLD_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                          "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "SLURM_STEP_ID")
_OTHER_WORLD_PREFIXES = ("TORCHELASTIC_", "OMPI_COMM_WORLD_")


def outside_any_world(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """`environ` without any launcher's variables: what a process needs to start a world of its own from
    inside a rank (a launcher it starts must not find the world of the rank that started it)."""
    names = {name for variables in LAUNCHER_VARIABLES.values() for entry in variables
             for name in ((entry,) if isinstance(entry, str) else entry)}
    names.update(_OTHER_WORLD_VARIABLES)
    return {name: value for name, value in environ.items()
            if name not in names and not name.startswith(_OTHER_WORLD_PREFIXES)}


@dataclasses.dataclass(frozen=True)
class Launch:
    """This process's place in a launched world."""
    launcher: str
    rank: int
    world_size: int
    local_rank: int
    ranks_per_node: int
    master_addr: str
    master_port: int

    @property
    def nodes(self) -> int:
        return -(-self.world_size // self.ranks_per_node)

    def topology(self) -> dict[str, int]:
        """What a record's cell says of the world's shape (RESULTS.md)."""
        return {"nodes": self.nodes, "ranks_per_node": self.ranks_per_node}


class NotAWorld(ValueError):
    """A launcher's variables that are incomplete or not numbers: what is wrong with them, in one line."""


def detect(environ: Mapping[str, str] = os.environ) -> Launch | None:
    """The launched world this process belongs to, or None where no launcher started it. A launcher's
    variables that are incomplete or not numbers raise NotAWorld (the front end's usage error), never a guess."""
    for launcher, (rank_name, size_name, local_name, per_node_names) in LAUNCHER_VARIABLES.items():
        if rank_name not in environ and size_name not in environ:
            continue
        if launcher == "srun" and "SLURM_STEP_ID" not in environ:
            continue  # an allocation's shell (salloc, a batch script) outside srun: not a rank of a world
        per_node_name = next((name for name in per_node_names if name in environ), per_node_names[0])
        missing = [name for name in (rank_name, size_name, "MASTER_ADDR", "MASTER_PORT") if not environ.get(name)]
        if missing:
            raise NotAWorld(f"a launched world ({launcher}'s variables are set) but {', '.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} not: the harness cannot join it")

        def number(name: str, default: int | None = None) -> int:
            value = environ.get(name)
            if value is None and default is not None:
                return default
            try:
                return int(str(value).split("(")[0])  # srun may say "2(x3)": 2 tasks on each of 3 nodes
            except ValueError:
                raise NotAWorld(f"{name}={value!r} is not a number: the harness cannot join the launched "
                                 f"world") from None

        rank, world_size = number(rank_name), number(size_name)
        launch = Launch(launcher, rank, world_size, number(local_name, rank),
                        number(per_node_name, world_size), environ["MASTER_ADDR"], number("MASTER_PORT"))
        if not 0 <= launch.rank < world_size or not 0 < launch.ranks_per_node <= world_size:
            raise NotAWorld(f"{rank_name}={rank}, {size_name}={world_size}, {per_node_name}="
                             f"{launch.ranks_per_node}: not a place in a world")
        return launch
    return None


def join(launch: Launch, backend: str) -> RankContext:
    """Joins the launched world's process group (the variables torch reads are set from the launcher's)."""
    import torch

    os.environ.update(RANK=str(launch.rank), WORLD_SIZE=str(launch.world_size), LOCAL_RANK=str(launch.local_rank),
                      LOCAL_WORLD_SIZE=str(launch.ranks_per_node), MASTER_ADDR=launch.master_addr,
                      MASTER_PORT=str(launch.master_port))
    if backend == "gloo":
        if launch.master_addr in ("127.0.0.1", "localhost"):
            gloo_environment()  # loopback only where the whole world is on this machine
        else:
            os.environ["DS_ACCELERATOR"] = "cpu"
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // launch.ranks_per_node))
        device = "cpu"
    else:
        torch.cuda.set_device(launch.local_rank)
        device = f"cuda:{launch.local_rank}"
    use_own_op_cache()
    import deepspeed

    try:
        deepspeed.init_distributed(dist_backend=backend, timeout=JOIN_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - one line naming the problem, not a traceback
        fault = op_fault(f"{exc}\n{traceback.format_exc()}")
        raise WorldStartError(f"cannot join the launched world at {launch.master_addr}:{launch.master_port} "
                              f"as rank {launch.rank} of {launch.world_size}: "
                              + (f"{fault}; " if fault else "") + f"{type(exc).__name__}: {exc}") from None
    return RankContext(launch.rank, launch.world_size, backend, device, launched=True)


class _Channel:
    """The messages of one run, in the default process group's store under a name rank 0 chose."""

    def __init__(self) -> None:
        import torch.distributed as dist

        name = [uuid.uuid4().hex if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(name, src=0)  # the one collective: every rank is here, at the start
        self.store = dist.PrefixStore(f"zero3-conformance/{name[0]}/", dist.distributed_c10d._get_default_store())

    def put(self, key: str, value: object) -> None:
        self.store.set(key, pickle.dumps(value))

    def has(self, key: str) -> bool:
        return bool(self.store.check([key]))

    def take(self, key: str) -> Any:
        return pickle.loads(self.store.get(key))


def _own_stacks() -> str:
    """Every thread's stack in this process (the task's thread is the one that matters)."""
    with tempfile.TemporaryFile("w+") as file:
        faulthandler.dump_traceback(file, all_threads=True)
        file.seek(0)
        return file.read()[-4000:]


class _TaskThread(threading.Thread):
    """One rank's part of one task, off the main thread, which keeps listening to rank 0 meanwhile."""

    def __init__(self, ctx: RankContext, fn_path: str, payload: object):
        super().__init__(name="zero3-conformance-task", daemon=True)
        self.ctx, self.fn_path, self.payload = ctx, fn_path, payload
        self.reply: RankReply | None = None

    def run(self) -> None:
        self.reply = run_task(self.ctx, self.fn_path, self.payload)


class LaunchedWorld:
    """Rank 0's side of a launched world; the same interface as a started World."""

    def __init__(self, ctx: RankContext, launch: Launch):
        self.ctx = ctx
        self.world_size = ctx.world_size
        self.backend = ctx.backend
        self.launch = launch
        self.broken = False
        self.fault = ""  # why the world is broken
        self._channel = _Channel()
        self._ids = itertools.count()
        self._stuck: _TaskThread | None = None  # rank 0's own part of a task that never ended

    def run(self, fn_path: str, payload: object, timeout_s: float,
            gave_up: Callable[[object], bool] = lambda value: False) -> TaskOutcome:
        if self.broken:
            raise RuntimeError(f"the launched world is unusable: {self.fault}")
        task_id = next(self._ids)
        started = time.monotonic()
        self._channel.put(f"task/{task_id}", (fn_path, payload))
        own = _TaskThread(self.ctx, fn_path, payload)
        own.start()
        waiting = set(range(self.world_size))

        def receive(wait_s: float) -> tuple[int, RankReply] | None:
            until = time.monotonic() + wait_s
            while True:
                if 0 in waiting and own.reply is not None:
                    waiting.discard(0)
                    return 0, own.reply
                for rank in sorted(waiting - {0}):
                    if self._channel.has(f"reply/{task_id}/{rank}"):
                        waiting.discard(rank)
                        return rank, self._channel.take(f"reply/{task_id}/{rank}")
                if time.monotonic() >= until:
                    return None
                time.sleep(POLL_S)

        def dump_stacks(ranks: set[int]) -> dict[int, str]:
            self._channel.put(f"stacks/{task_id}", True)
            stacks = {0: _own_stacks()} if 0 in ranks else {}
            until = time.monotonic() + STACKS_WAIT_S
            while time.monotonic() < until and set(stacks) != ranks:
                for rank in ranks - set(stacks):
                    if self._channel.has(f"stack/{task_id}/{rank}"):
                        stacks[rank] = self._channel.take(f"stack/{task_id}/{rank}")
                time.sleep(POLL_S)
            return {rank: stacks.get(rank, "(no stack came from this rank)") for rank in sorted(ranks)}

        outcome = collect(self.world_size, started + timeout_s, gave_up, receive, lambda replied: {}, dump_stacks,
                          STRAGGLER_GRACE_S)
        outcome.seconds = time.monotonic() - started
        if outcome.timed_out or len(outcome.replies) < self.world_size:
            still_in = sorted(waiting)
            self.broken = True
            self.fault = (f"ranks {still_in} did not finish a task within its limit" if outcome.timed_out else
                          f"ranks {still_in} were still inside a task that another rank had left")
            if own.reply is None:
                self._stuck = own
        return outcome

    def stop(self, exit_status: int) -> None:
        """Tells every other rank to exit with `exit_status`, and waits a little for them to go: under some
        launchers rank 0's process holds the store they read it from."""
        self._channel.put("stop", exit_status)
        until = time.monotonic() + GOODBYE_WAIT_S
        others = set(range(1, self.world_size))
        while others and time.monotonic() < until:
            others = {rank for rank in others if not self._channel.has(f"left/{rank}")}
            time.sleep(POLL_S)

    @property
    def stuck(self) -> bool:
        """Rank 0's own part of a task never ended: the process cannot leave the process group cleanly."""
        return self._stuck is not None

    def close(self) -> None:
        pass  # the launcher owns the world


class LaunchedPool:
    """The launched world where the runner takes worlds from a pool: it is never started again."""

    restarts = False

    def __init__(self, world: LaunchedWorld):
        self.world = world

    def get(self, world_size: int, fresh: bool = False) -> LaunchedWorld:
        if world_size != self.world.world_size:
            raise WorldStartError(f"the launched world has {self.world.world_size} ranks, not {world_size}")
        if self.world.broken:
            raise WorldStartError(f"the launched world is unusable after an earlier fault ({self.world.fault}); "
                                  f"`zero3-conformance run --resume DIR` in a new launch runs the rest")
        return self.world

    def release(self, world_size: int) -> None:
        pass

    def close(self) -> None:
        pass

    def on_each_node(self, fn_path: str, payload: object, timeout_s: float) -> None:
        """Nodes may share no files: every rank runs it (each node's first rank does the node's work)."""
        self.world.run(fn_path, payload, timeout_s)


def serve(ctx: RankContext) -> tuple[int, bool]:
    """A rank other than 0: runs each task rank 0 hands out until it says stop. Returns (rank 0's exit
    status, whether a task of this rank never ended)."""
    channel = _Channel()
    task: _TaskThread | None = None
    for task_id in itertools.count():
        while not channel.has(f"task/{task_id}") and not channel.has("stop"):
            time.sleep(POLL_S)
        if channel.has("stop"):
            break
        fn_path, payload = channel.take(f"task/{task_id}")
        task = _TaskThread(ctx, fn_path, payload)
        task.start()
        stacks_sent = False
        while task.reply is None and not channel.has("stop"):
            if not stacks_sent and channel.has(f"stacks/{task_id}"):
                channel.put(f"stack/{task_id}/{ctx.rank}", _own_stacks())
                stacks_sent = True
            task.join(POLL_S)
        if task.reply is None:
            break  # rank 0 stopped while this rank was still inside a task
        channel.put(f"reply/{task_id}/{ctx.rank}", task.reply)
    status = channel.take("stop")
    channel.put(f"left/{ctx.rank}", True)
    return int(status), task is not None and task.reply is None


def note_served(launch: Launch, out: Any, exit_status: int) -> None:
    """On a node that holds no rank 0, its first rank leaves a note in the run directory it was given, where
    rank 0's node has the records: what ran this node's ranks, and how the run ended. A matrix run reads it
    (a node's cell that served is not a cell that failed to run)."""
    if launch.local_rank != 0 or launch.rank == 0:
        return
    note = {"served": f"{launch.master_addr}:{launch.master_port}", "launcher": launch.launcher,
            "ranks": [launch.rank, launch.rank + launch.ranks_per_node - 1], "exit_status": exit_status}
    RunDir(out).write_served(note)


def leave(exit_status: int, stuck: bool) -> int:
    """Leaves the process group; a process whose task thread is stuck inside a collective cannot, and exits
    at once (what it had to write is written)."""
    if stuck:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_status)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return exit_status
