"""Persistent multi-process worlds: N real torch.distributed ranks, started once, running many tasks.

A task is a function named by "module:function"; every rank calls it with (RankContext, payload) and
the parent collects every rank's reply. A task that outlives its limit, a rank that dies, or a rank
that raises while its peers are stuck in a collective leaves the world unusable: `broken` is set and
the owner starts a new one. This module knows nothing about transformers or the contract.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import gc
import importlib
import itertools
import multiprocessing as mp
import os
import queue
import signal
import socket
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from ..op_cache import op_fault, use_own_op_cache

if TYPE_CHECKING:
    import torch.distributed as dist

# A rank that raised while the others are still inside the task gets this long to be joined by them
# before the world is declared stuck (the others are usually waiting in a collective).
STRAGGLER_GRACE_S = 5.0


@dataclasses.dataclass
class RankContext:
    rank: int
    world_size: int
    backend: str
    device: str  # "cpu" or "cuda:N"
    launched: bool = False  # a launcher started this world, not the harness (see launched.py)


@dataclasses.dataclass
class RankReply:
    rank: int
    ok: bool
    value: object = None  # the task's return value when ok
    error: str = ""  # "ExcType: message" when not ok
    traceback: str = ""


@dataclasses.dataclass
class TaskOutcome:
    replies: dict[int, RankReply]
    timed_out: bool = False
    exit_codes: dict[int, int] = dataclasses.field(default_factory=dict)  # ranks that died
    stacks: dict[int, str] = dataclasses.field(default_factory=dict)  # dumped on timeout
    seconds: float = 0.0


class WorldStartError(RuntimeError):
    pass


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


GROUP_TIMEOUT = timedelta(minutes=30)


def join_loopback_group(backend: str, rank: int, world_size: int, port: int) -> None:
    """Joins the process group of a world on this machine, and DeepSpeed's side of it. Its key-value store is
    served by rank 0 on loopback only: left to itself, torch's store listens on every interface of the
    machine whatever MASTER_ADDR says."""
    import deepspeed
    import torch.distributed as dist

    dist.init_process_group(backend, store=_loopback_store(rank, world_size, port), rank=rank,
                            world_size=world_size, timeout=GROUP_TIMEOUT)
    deepspeed.init_distributed(dist_backend=backend, timeout=GROUP_TIMEOUT)


def _loopback_store(rank: int, world_size: int, port: int) -> dist.TCPStore:
    import torch.distributed as dist

    listen_fd = None
    if rank == 0:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(128)
            listen_fd = sock.detach()  # the store's now: it polls the socket until the process ends
    return dist.TCPStore("127.0.0.1", port, world_size, rank == 0, GROUP_TIMEOUT, master_listen_fd=listen_fd)


def resolve(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    task: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return task


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """Linux: this process gets `signum` when its parent dies, so a run killed outright (a cancelled CI job)
    leaves no rank waiting forever for its next task. Elsewhere a no-op."""
    import ctypes
    import ctypes.util

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signum)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signum)


def gloo_environment() -> None:
    """What DeepSpeed and gloo read, some of it at import: the CPU accelerator, gloo's sockets on loopback."""
    os.environ["DS_ACCELERATOR"] = "cpu"
    if any(name == "lo" for _, name in socket.if_nameindex()):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


def rank_context(backend: str, preload: tuple[str, ...],
                 start_method: str | None = None) -> mp.context.SpawnContext | mp.context.ForkServerContext:
    """How ranks are started. gloo: forked from a server process (multiprocessing's forkserver) that imported
    `preload` once, so that starting a world costs no imports: the server is started with the first world,
    and its imports are shared by every rank of every later world. nccl: spawned, as CUDA cannot be used in
    a process forked from one that loaded it. `start_method` "spawn" asks for spawned ranks anyway."""
    if start_method == "spawn" or backend != "gloo" or "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    # Only the first world's list counts (there is one server per process); a rank still imports its own
    # preload, which costs nothing where the server has it already.
    context.set_forkserver_preload(["zero3_conformance.worlds.gloo_env", *preload])
    return context


def _leave_forkserver() -> None:
    """A process forked by multiprocessing's forkserver holds the server's "alive" pipe, so that the server
    outlives it; and the server is the parent whose death die_with_parent() watches. A rank lets go of the
    pipe: once the process that started the world dies, nothing keeps the server, and it takes its ranks
    with it."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    alive_fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(alive_fd, int):
        try:
            os.close(alive_fd)
        except OSError:
            pass
        setattr(server, "_forkserver_alive_fd", None)  # noqa: B010 - a private attribute of the standard library


def _rank_main(
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    tasks: mp.Queue[Any],
    replies: mp.Queue[Any],
    stack_file: str,
    preload: tuple[str, ...],
    environment: dict[str, str],
) -> None:
    try:  # a rank that dies before it can reply leaves the parent only an exit code: report why instead
        die_with_parent()
        _leave_forkserver()
        # The parent's environment as of this world's start (a forked rank would have the server's, as of the
        # first world's start), then this rank's own.
        os.environ.clear()
        os.environ.update(environment)
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
        )
        if backend == "gloo":
            gloo_environment()
        stacks_file = open(stack_file, "w")
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        replies.put(("start", rank, RankReply(rank, False, error=_describe(exc), traceback=traceback.format_exc())))
        return
    with stacks_file as stacks:
        faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
        try:
            import torch

            if backend == "gloo":
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
                device = "cpu"
            else:
                torch.cuda.set_device(rank)
                device = f"cuda:{rank}"
            join_loopback_group(backend, rank, world_size, port)
            for module in preload:
                importlib.import_module(module)
            ctx = RankContext(rank, world_size, backend, device)
            set_aside_survivors()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
            replies.put(("start", rank, RankReply(rank, False, error=_describe(exc), traceback=traceback.format_exc())))
            return
        replies.put(("start", rank, RankReply(rank, True)))
        while True:
            message = tasks.get()
            if message is None:
                break
            task_id, fn_path, payload = message
            replies.put((task_id, rank, run_task(ctx, fn_path, payload)))
        try:
            torch.distributed.destroy_process_group()
        except Exception:  # noqa: BLE001 - shutting down anyway
            pass


def run_task(ctx: RankContext, fn_path: str, payload: object) -> RankReply:
    """One rank's part of a task: its return value, or what it raised."""
    try:
        reply = RankReply(ctx.rank, True, value=resolve(fn_path)(ctx, payload))
    except BaseException as exc:  # noqa: BLE001 - the parent decides what a rank's exception means
        reply = RankReply(ctx.rank, False, error=_describe(exc), traceback=traceback.format_exc())
    set_aside_survivors()
    return reply


def collect(world_size: int, deadline: float, gave_up: Callable[[object], bool],
            receive: Callable[[float], tuple[int, RankReply] | None],
            dead: Callable[[set[int]], dict[int, int]],
            dump_stacks: Callable[[set[int]], dict[int, str]], grace_s: float = STRAGGLER_GRACE_S) -> TaskOutcome:
    """Every rank's reply to one task, until `deadline`. `receive(wait_s)`: a reply that came, or None after
    waiting; `dead(replied)`: exit codes of ranks that died without replying; `dump_stacks(ranks)` on a
    timeout. Once a rank raised or gave up (`gave_up`), the others get `grace_s` more at most."""
    outcome = TaskOutcome(replies={})
    first_give_up: float | None = None
    while len(outcome.replies) < world_size:
        now = time.monotonic()
        if first_give_up is not None:
            deadline = min(deadline, first_give_up + grace_s)
        if now >= deadline:
            if first_give_up is None:
                outcome.timed_out = True
                outcome.stacks = dump_stacks(set(range(world_size)) - set(outcome.replies))
            return outcome
        got = receive(min(0.2, deadline - now))
        if got is None:
            outcome.exit_codes.update(dead(set(outcome.replies)))
            if outcome.exit_codes:
                return outcome
            continue
        rank, reply = got
        if first_give_up is None and (not reply.ok or gave_up(reply.value)):
            first_give_up = time.monotonic()
        outcome.replies[rank] = reply
    return outcome


def set_aside_survivors() -> None:
    """Moves every object alive now (imported modules, caches: hundreds of thousands once transformers is
    in) out of the cyclic collector's view, so a later full collection (each task's own, DeepSpeed's at
    engine set-up) costs in proportion to what that task made: 0.3-0.4 s less per collection at world size 3.
    Only unreachable cycles are missed, and the collection just before leaves none."""
    gc.collect()
    gc.freeze()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class World:
    """N ranks on this machine, rendezvous on 127.0.0.1 with a free port."""

    def __init__(self, world_size: int, backend: str = "gloo", preload: tuple[str, ...] = (),
                 start_timeout_s: float = 600.0, start_method: str | None = None):
        self.world_size = world_size
        self.backend = backend
        self.preload = preload
        self.start_timeout_s = start_timeout_s
        self.broken = False
        self._ids = itertools.count()
        use_own_op_cache()  # before the ranks take this process's environment, and before any forkserver starts
        self._ctx = rank_context(backend, preload, start_method)
        self._procs: list[mp.process.BaseProcess] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="zero3-world-")

    def start(self) -> World:
        port = free_loopback_port()
        self._replies = self._ctx.Queue()
        self._tasks = [self._ctx.Queue() for _ in range(self.world_size)]
        for rank in range(self.world_size):
            proc = self._ctx.Process(
                target=_rank_main,
                args=(rank, self.world_size, port, self.backend, self._tasks[rank], self._replies,
                      self._stack_file(rank), self.preload, dict(os.environ)),
                daemon=True,
            )
            proc.start()
            self._procs.append(proc)
        outcome = self._collect("start", time.monotonic() + self.start_timeout_s)
        failed = [r for r in outcome.replies.values() if not r.ok]
        if outcome.timed_out or outcome.exit_codes or failed:
            self.close()
            fault = op_fault(failed[0].error + failed[0].traceback) if failed else None
            detail = (f"{fault}\n" if fault else "") + failed[0].error if failed else (
                f"ranks died with exit codes {outcome.exit_codes}" if outcome.exit_codes else
                f"start timed out after {self.start_timeout_s:.0f} s" + "".join(
                    f"\n--- rank {r} stack ---\n{stack[-1500:]}" for r, stack in sorted(outcome.stacks.items())))
            raise WorldStartError(f"world of {self.world_size} ranks ({self.backend}) did not start: {detail}")
        return self

    def run(self, fn_path: str, payload: object, timeout_s: float,
            gave_up: Callable[[object], bool] = lambda value: False) -> TaskOutcome:
        """Runs the task in every rank. `gave_up(value)` says a rank's reply means it stopped early, so its
        peers may be stuck waiting for it: they get STRAGGLER_GRACE_S more, not the whole limit."""
        if self.broken:
            raise RuntimeError("world is broken; start a new one")
        task_id = next(self._ids)
        started = time.monotonic()
        for q in self._tasks:
            q.put((task_id, fn_path, payload))
        outcome = self._collect(task_id, started + timeout_s, gave_up)
        outcome.seconds = time.monotonic() - started
        if outcome.timed_out or outcome.exit_codes or len(outcome.replies) < self.world_size:
            self.broken = True
            self.close()
        return outcome

    def _collect(self, task_id: int | str, deadline: float,
                 gave_up: Callable[[object], bool] = lambda value: False) -> TaskOutcome:
        def receive(wait_s: float) -> tuple[int, RankReply] | None:
            try:
                got_id, rank, reply = self._replies.get(timeout=wait_s)
            except queue.Empty:
                return None
            return (rank, reply) if got_id == task_id else None  # not a late reply to an earlier task

        def dead(replied: set[int]) -> dict[int, int]:
            return {rank: proc.exitcode for rank, proc in enumerate(self._procs)
                    if proc.exitcode is not None and rank not in replied}

        return collect(self.world_size, deadline, gave_up, receive, dead, self._dump_stacks)

    def _stack_file(self, rank: int) -> str:
        return str(Path(self._tmp.name) / f"stack-rank{rank}.txt")

    def _dump_stacks(self, ranks: set[int]) -> dict[int, str]:
        for rank in ranks:
            proc = self._procs[rank]
            if proc.pid and proc.exitcode is None:
                os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(1.0)
        return {rank: Path(self._stack_file(rank)).read_text(errors="replace")[-4000:] for rank in sorted(ranks)}

    def close(self) -> None:
        for q, proc in zip(self._tasks if hasattr(self, "_tasks") else [], self._procs):
            if proc.exitcode is None and not self.broken:
                q.put(None)
        # A healthy world's ranks get 10 s to leave their process group; a broken one's are stuck in a
        # collective or a hang and will never leave on their own: they are killed at once.
        deadline = time.monotonic() + (0 if self.broken else 10)
        for proc in self._procs:
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.exitcode is None:
                proc.kill()
                proc.join(timeout=5)
        self._procs = []
        self.broken = True
        self._tmp.cleanup()  # the ranks' stack files: read already where a hang needed them

    def __enter__(self) -> World:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunsTasks(Protocol):
    """A world, started here or by a launcher: runs a task in every rank."""

    world_size: int

    def run(self, fn_path: str, payload: object, timeout_s: float,
            gave_up: Callable[[object], bool] = ...) -> TaskOutcome: ...


class Pool(Protocol):
    """Where a runner gets the world for a world size: worlds it starts (WorldPool) or the one a launcher
    started (launched.LaunchedPool). `restarts`: whether a fresh world can replace one."""

    restarts: bool

    def get(self, world_size: int, fresh: bool = False) -> RunsTasks: ...

    def release(self, world_size: int) -> None: ...

    def close(self) -> None: ...

    def on_each_node(self, fn_path: str, payload: object, timeout_s: float) -> None:
        """Runs a task once on every node whose files this process does not share (none, for a world started
        here: its ranks are this machine's processes)."""


class WorldPool:
    """One live world per world size, started on first use and replaced when broken."""

    restarts = True  # a fresh world can replace one

    def __init__(self, backend: str = "gloo", preload: tuple[str, ...] = (), start_method: str | None = None):
        self.backend = backend
        self.preload = preload
        self.start_method = start_method
        self._worlds: dict[int, World] = {}

    def get(self, world_size: int, fresh: bool = False) -> World:
        """The live world of this size; `fresh`: a newly started one in place of any that is alive."""
        if fresh:
            self.release(world_size)
        world = self._worlds.get(world_size)
        if world is None or world.broken:
            world = World(world_size, self.backend, self.preload, start_method=self.start_method).start()
            self._worlds[world_size] = world
        return world

    def release(self, world_size: int) -> None:
        """Closes the world of this size, if one is alive."""
        world = self._worlds.pop(world_size, None)
        if world is not None:
            world.close()

    def close(self) -> None:
        for world_size in list(self._worlds):
            self.release(world_size)

    def on_each_node(self, fn_path: str, payload: object, timeout_s: float) -> None:
        pass  # one node: its ranks see this process's files

