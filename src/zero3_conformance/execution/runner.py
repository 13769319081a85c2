"""Runs cases in persistent worlds: tries a case once in a world (`Runner.try_case`), finds the worlds that
earlier cases spoiled, and runs a selection over world lanes. How often a case is tried is tries.py's; its
record is made in records.py and triaged where it is written (records.Recorder); its checkpoint comes from
checkpoints.py; the lanes are lanes.py's."""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..casekey import CaseKey
from ..catalog import CaseSpec
from ..cell import describe_cell, local_device, visible_gpus
from ..checks.execute import SPOILED
from ..dsconfig import PLAIN, with_dtype, with_zero3_variant
from ..op_cache import clear_stale_build_locks
from ..protocol import RankTask, gave_up, verdict
from ..results import DEFAULT_REPEAT, ERROR, NOT_RUN, SKIP, Record
from ..structure import NoStructure, StructureOracle
from ..worlds.launched import LaunchedPool, LaunchedWorld
from ..worlds.world import Pool, RunsTasks, WorldPool, WorldStartError
from ..zoo import FamilyUnavailable
from .checkpoints import Checkpoints
from .lanes import in_lanes
from .records import LeftoverIds, Recorder, Spoiled, leftover_record, record_of
from .tries import Attempt, paired_tries, tries_of

CHECK_TIMEOUT_S = 180.0
EXECUTE = "zero3_conformance.checks.execute:execute"
RANK_PRELOAD = ("transformers", "zero3_conformance.checks.registry", "zero3_conformance.execution.warm")
# Inherited by rank processes: no hub, no progress bars, no per-load chatter in the run's output.
QUIET_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
             "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "PYTHONWARNINGS": "ignore"}


def quiet_environment() -> None:
    """No hub, no progress bars, no per-load chatter, here and in every rank process started after."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


class Runner:
    """Runs cases in worlds it starts (or the one a launcher started) and turns each case's tries into its
    record, as run: a front end triages records where it writes them (records.Recorder)."""

    def __init__(self, ds_config: dict[str, Any], backend: str | None = None,
                 timeout_s: float = CHECK_TIMEOUT_S, repeat: int = DEFAULT_REPEAT,
                 launched: LaunchedWorld | None = None):
        """`launched`: run every case in this world, which a launcher started (see launched.py)."""
        quiet_environment()
        detected_backend, device = local_device()
        self.backend = launched.backend if launched else backend or detected_backend
        self.cell = describe_cell(self.backend, device)
        if launched:
            self.cell.update(launched.launch.topology())
        # A world the harness starts is one node: a node-aware variant is a SKIP there (see try_case).
        self.nodes = launched.launch.nodes if launched else 1
        self.ranks_per_node = launched.launch.ranks_per_node if launched else 0
        self.ds_config = ds_config
        self.timeout_s = timeout_s
        self.repeat = repeat  # further tries of a case that neither passed nor skipped
        self.pool: Pool = LaunchedPool(launched) if launched else WorldPool(self.backend, RANK_PRELOAD)
        self.checkpoints = Checkpoints(self.pool)
        self.gpus = visible_gpus() if self.backend == "nccl" else None  # NCCL: one rank per GPU
        self.unstartable: dict[int, str] = {}  # world size -> why its world would not start
        self.structures = StructureOracle()  # every class's clean structure, derived once per run
        # world -> the cases it ran (weakly keyed: a world started later never inherits a closed one's history)
        self._history: weakref.WeakKeyDictionary[RunsTasks, list[tuple[CaseSpec, RankTask]]] = \
            weakref.WeakKeyDictionary()
        self._leftovers: list[Record] = []  # records of spoiled worlds, for the front end to write
        self._leftovers_lock = threading.Lock()  # world lanes add and take them
        self._leftover_ids = LeftoverIds()
        for lock in clear_stale_build_locks():
            print(f"zero3-conformance: removed a stale JIT build lock a killed build left: {lock}", file=sys.stderr)

    def run_case(self, case: CaseSpec) -> Record:
        """Runs one case; one that neither passes nor skips is tried again (tries.tries_of)."""
        return record_of(case, tries_of(self.try_case, case, self.repeat), self.cell, self.pool.restarts)

    def run_together(self, cases: Sequence[CaseSpec]) -> list[Record]:
        """The cases of one check on one model, layout, world size and dtype, one per subject, tried as
        tries.paired_tries says, so that blame compares like with like."""
        tries = paired_tries(self.try_case, cases, self.repeat)
        return [record_of(case, attempts, self.cell, self.pool.restarts) for case, attempts in zip(cases, tries)]

    def try_case(self, case: CaseSpec, fresh: bool) -> Attempt:
        """One try of `case`; `fresh`: in a world started for it (where this runner can start one)."""
        started = time.monotonic()

        def attempt(status: str, message: str, metrics: dict[str, object] | None = None) -> Attempt:
            return Attempt(status, message, metrics or {}, time.monotonic() - started, fresh and self.pool.restarts)

        if case.skip:
            return attempt(SKIP, case.skip)
        if self.gpus is not None and case.world_size > self.gpus:
            return attempt(SKIP, f"world size {case.world_size} needs {case.world_size} GPUs (one rank per GPU); "
                                 f"{self.gpus} visible")
        try:
            checkpoint = self.checkpoints.path(case)
        except FamilyUnavailable as exc:
            return attempt(SKIP, str(exc))
        if case.variant != PLAIN and self.nodes < 2:
            return attempt(SKIP, f"the {case.variant} variant partitions within a node's ranks: this world is one "
                                 f"node (a world launched on 2 or more nodes checks it)")
        task = self._task(case, checkpoint)
        if case.world_size in self.unstartable:  # one wait per run for a world that cannot start, not one per case
            return attempt(ERROR, f"not run: {self.unstartable[case.world_size]}", {NOT_RUN: True})
        try:
            world = self.pool.get(case.world_size, fresh=fresh)
        except WorldStartError as exc:
            self.unstartable[case.world_size] = str(exc)
            return attempt(ERROR, f"not run: {exc}", {NOT_RUN: True})
        timeout_s = min(self.timeout_s, case.timeout_s or self.timeout_s)
        history = self._history.setdefault(world, [])
        outcome = world.run(EXECUTE, task, timeout_s, gave_up)
        status, message, metrics = verdict(outcome, case.world_size)
        if SPOILED in metrics and self.pool.restarts:
            # Not judged where earlier cases spoiled the process: said in a record of its own, and tried again
            # in a world started for it.
            leftover = self._leftover(case, task, list(history), metrics[SPOILED], timeout_s)
            with self._leftovers_lock:
                self._leftovers.append(leftover)
            again = self.try_case(case, fresh=True)
            return dataclasses.replace(again, seconds=time.monotonic() - started)
        history.append((case, task))
        return attempt(status, message, metrics)

    def take_leftovers(self) -> list[Record]:
        """The leftover records made since the last call (the front end writes them beside the cases')."""
        with self._leftovers_lock:
            taken, self._leftovers = self._leftovers, []
        return taken

    def _leftover(self, case: CaseSpec, task: RankTask, history: list[tuple[CaseSpec, RankTask]],
                  spoiled: Spoiled, timeout_s: float) -> Record:
        """P4's record of a spoiled world, with the subject whose share of its cases alone, replayed in a fresh
        world, reproduces the change (records.leftover_record)."""
        started = time.monotonic()
        shares: dict[str, list[tuple[CaseSpec, RankTask]]] = defaultdict(list)
        for earlier in history:
            shares[earlier[0].subject].append(earlier)
        reproduced = [subject for subject, share in shares.items()
                      if self._replay_spoils(case, task, share, timeout_s)]
        share = len(shares[reproduced[0]]) if len(reproduced) == 1 else 0
        return leftover_record(case, self._leftover_ids.next(case, len(history)), [c for c, _ in history],
                               spoiled, reproduced, share, self.cell, time.monotonic() - started)

    def _replay_spoils(self, case: CaseSpec, task: RankTask, share: list[tuple[CaseSpec, RankTask]],
                       timeout_s: float) -> bool:
        """Whether running `share` in a fresh world, then `case` (its `task`), leaves `case` not judged there
        again."""
        world = self.pool.get(case.world_size, fresh=True)
        for _earlier, earlier_task in share:
            world.run(EXECUTE, earlier_task, timeout_s, gave_up)
        _, _, metrics = verdict(world.run(EXECUTE, task, timeout_s, gave_up), case.world_size)
        self.pool.release(case.world_size)  # the replay's world is spoiled: the next case's starts fresh
        return SPOILED in metrics

    def _task(self, case: CaseSpec, checkpoint: str | None) -> RankTask:
        """What a rank needs to run the case: its config in this run, its checkpoint, its class's clean structure."""
        ds_config = with_zero3_variant(with_dtype(self.ds_config, case.dtype), case.variant, self.ranks_per_node)
        structure = None
        if case.family is not None:
            found = self.structures.get(case.family)
            structure = {"error": str(found)} if isinstance(found, NoStructure) else found.to_dict()
        return case.task(ds_config, checkpoint, structure)

    def run(self, cases: Iterable[CaseSpec], recorder: Recorder,
            progress: Callable[[int, int, Record], None] = lambda i, n, r: None,
            parallel_worlds: int = 1) -> list[Record]:
        """Runs every case and hands each record to `recorder` as it comes. A world size's cases run in one
        world, one after another, the subjects of one case together (`run_together`); `parallel_worlds` lanes
        each take the next world size left (lanes.in_lanes)."""
        cases = list(cases)
        self.checkpoints.prepare(cases)  # before any world starts: ranks only read them
        groups = _by_world_size(cases)
        total = sum(map(len, groups.values()))
        records: list[Record] = []
        lock = threading.Lock()

        def run_size(size: int, stop: threading.Event) -> None:
            for together in _by_case(groups[size]):
                if stop.is_set():
                    return
                finished = self.run_together(together) + self.take_leftovers()
                with lock:
                    if stop.is_set():  # interrupted: its world was torn down under it
                        return
                    for record in finished:
                        records.append(recorder.write(record))
                        progress(len(records), total, records[-1])

        try:
            in_lanes(groups, run_size, parallel_worlds, self.pool.release)
        finally:
            self.close()
        return records

    def close(self) -> None:
        self.pool.close()
        self.structures.close()


def _by_world_size(cases: Iterable[CaseSpec]) -> dict[int, list[CaseSpec]]:
    """The cases of each world size, in their order: a world size's cases run in one world, one after another."""
    groups: dict[int, list[CaseSpec]] = defaultdict(list)
    for case in cases:
        groups[case.world_size].append(case)
    return dict(groups)


def _by_case(cases: Iterable[CaseSpec]) -> list[list[CaseSpec]]:
    """Cases that differ only in their subject, together, in the order their first one comes."""
    together: dict[CaseKey, list[CaseSpec]] = defaultdict(list)
    for case in cases:
        together[case.key.across_subjects()].append(case)
    return list(together.values())


def default_parallel_worlds(backend: str) -> int:
    """On CPU, two worlds at once where there are two cores or more: ranks spend much of a check waiting on
    each other in collectives, and a second world's ranks use that time (the default run on 2 cores: 24%
    less wall time; three at once was slower). On GPUs one, so that every rank has a GPU of its own."""
    return 2 if backend == "gloo" and (os.cpu_count() or 1) >= 2 else 1


def default_out_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")
