"""Runs cases in persistent worlds and writes a record for each as it finishes."""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
import weakref
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable

from ..casekey import CaseKey
from ..catalog import CaseSpec
from ..cell import describe_cell, local_device, visible_gpus
from ..checks.execute import SPOILED
from ..dsconfig import PLAIN, with_dtype, with_zero3_variant
from ..finding_kinds import make as make_finding
from ..known_issues import KnownIssue
from ..known_issues import apply as apply_known_issues
from ..op_cache import use_own_op_cache
from ..protocol import RankTask, gave_up, verdict
from ..results import (
    DEFAULT_REPEAT,
    ERROR,
    FAIL,
    NOT_RUN,
    PASS,
    REPRODUCED_BY,
    SETTLED,
    SKIP,
    TIMEOUT,
    Record,
    RecordWriter,
    most_severe,
)
from ..structure import NoStructure, StructureOracle
from ..worlds.launched import LaunchedPool, LaunchedWorld
from ..worlds.world import Pool, RankContext, WorldPool, WorldStartError
from ..zoo import Family, FamilyUnavailable, ensure_checkpoint, ensure_checkpoints

CHECK_TIMEOUT_S = 180.0
EXECUTE = "zero3_conformance.checks.execute:execute"
LEFTOVER_CHECK = "P4-leaves_no_leftover"  # the record of a world whose earlier cases spoiled its builds without ZeRO
UNATTRIBUTED = "unattributed"  # a leftover record's subject where no one subject's cases alone reproduce it
NODE_CHECKPOINTS_S = 3600.0  # a launched world's nodes write the run's checkpoints (the sweep's: minutes)
RANK_PRELOAD = ("transformers", "zero3_conformance.checks.registry", "zero3_conformance.execution.warm")
# Inherited by rank processes: no hub, no progress bars, no per-load chatter in the run's output.
QUIET_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
             "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "PYTHONWARNINGS": "ignore"}


def quiet_environment() -> None:
    """No hub, no progress bars, no per-load chatter, here and in every rank process started after."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One try of a case: its verdict, and whether it ran in a world started for it."""
    status: str
    message: str
    metrics: dict[str, Any]
    seconds: float
    fresh: bool

    @property
    def ran(self) -> bool:
        return not self.metrics.get(NOT_RUN)


class Runner:
    """Runs cases, tries again those that neither pass nor skip, and turns every case's tries into one
    record, with the known-issues file applied."""

    def __init__(self, ds_config: dict[str, Any], backend: str | None = None,
                 timeout_s: float = CHECK_TIMEOUT_S, known_issues: Sequence[KnownIssue] = (),
                 repeat: int = DEFAULT_REPEAT, launched: LaunchedWorld | None = None):
        """`launched`: run every case in this world, which a launcher started (see launched.py)."""
        quiet_environment()
        detected_backend, device = local_device()
        self.backend = launched.backend if launched else backend or detected_backend
        self.cell = describe_cell(self.backend, device)
        if launched:
            self.cell.update(launched.launch.topology())
        # A world the harness starts is one node: a node-aware variant is a SKIP there (see _try).
        self.nodes = launched.launch.nodes if launched else 1
        self.ranks_per_node = launched.launch.ranks_per_node if launched else 0
        self.ds_config = ds_config
        self.timeout_s = timeout_s
        self.known_issues = list(known_issues)
        self.repeat = repeat  # further tries of a case that neither passed nor skipped
        self.pool: Pool = LaunchedPool(launched) if launched else WorldPool(self.backend,
                                                                                               RANK_PRELOAD)
        self.gpus = visible_gpus() if self.backend == "nccl" else None  # NCCL: one rank per GPU
        self.unstartable: dict[int, str] = {}  # world size -> why its world would not start
        self.structures = StructureOracle()  # every class's clean structure, derived once per run
        # world -> the cases it ran (weakly keyed: a world started later never inherits a closed one's history)
        self._history: weakref.WeakKeyDictionary[Any, list[tuple[CaseSpec, RankTask]]] = \
            weakref.WeakKeyDictionary()
        self._leftovers: list[Record] = []  # records of spoiled worlds, for the front end to write
        self._leftovers_lock = threading.Lock()  # world lanes add and take them
        self._leftover_ids: Counter[str] = Counter()  # how many leftover records each id has had
        for lock in clear_stale_build_locks():
            print(f"zero3-conformance: removed a stale JIT build lock a killed build left: {lock}", file=sys.stderr)

    def run_case(self, case: CaseSpec) -> Record:
        """Runs one case; one that neither passes nor skips is tried again (see `_attempts`)."""
        return self._record(case, self._attempts(case))

    def run_together(self, cases: Sequence[CaseSpec]) -> list[Record]:
        """The cases of one check on one model, layout, world size and dtype, one per subject. Where one
        subject did not pass, a subject that passed at once is tried again as often, so that a report
        blames one subject only for a difference that held on every try of both."""
        tries = [self._attempts(case) for case in cases]
        if self.repeat and any(most_severe(a.status for a in t) not in SETTLED for t in tries):
            for case, attempts in zip(cases, tries):
                if [a.status for a in attempts] == [PASS]:
                    attempts += self._again(case, attempts, self.repeat)
        return [self._record(case, attempts) for case, attempts in zip(cases, tries)]

    def _attempts(self, case: CaseSpec) -> list[Attempt]:
        """A first try, and `repeat` more when it neither passed nor skipped: a timing race shows as outcomes
        that differ, and the last try runs in a freshly started world, so that state one world carried from
        case to case cannot decide every try."""
        first = [self._try(case, fresh=False)]
        if first[0].status in SETTLED or not first[0].ran:
            return first
        return first + self._again(case, first, self.repeat)

    def _again(self, case: CaseSpec, tries: list[Attempt], more: int) -> list[Attempt]:
        """Up to `more` further tries, the last in a fresh world. A TIMEOUT is tried again once at most: a hang
        costs the whole limit, and a second one says what a third would."""
        added: list[Attempt] = []
        for number in range(more):
            so_far = [a.status for a in tries + added]
            if TIMEOUT in so_far and so_far.index(TIMEOUT) < len(so_far) - 1:
                break
            last = number == more - 1 or so_far[-1] == TIMEOUT
            again = self._try(case, fresh=last)
            if not again.ran:  # the world broke since: what ran is the record
                break
            added.append(again)
            if last:
                break
        return added

    def _try(self, case: CaseSpec, fresh: bool) -> Attempt:
        started = time.monotonic()

        def attempt(status: str, message: str, metrics: dict[str, Any] | None = None) -> Attempt:
            return Attempt(status, message, metrics or {}, time.monotonic() - started, fresh and self.pool.restarts)

        if case.skip:
            return attempt(SKIP, case.skip)
        if self.gpus is not None and case.world_size > self.gpus:
            return attempt(SKIP, f"world size {case.world_size} needs {case.world_size} GPUs (one rank per GPU); "
                                 f"{self.gpus} visible")
        try:
            checkpoint = str(ensure_checkpoint(case.family, case.layout)) if case.family and case.layout else None
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
            again = self._try(case, fresh=True)
            return dataclasses.replace(again, seconds=time.monotonic() - started)
        history.append((case, task))
        return attempt(status, message, metrics)

    def take_leftovers(self) -> list[Record]:
        """The leftover records made since the last call (the front end writes them beside the cases')."""
        with self._leftovers_lock:
            taken, self._leftovers = self._leftovers, []
        return taken

    def _leftover(self, case: CaseSpec, task: RankTask, history: list[tuple[CaseSpec, RankTask]],
                  spoiled: dict[str, Any], timeout_s: float) -> Record:
        """P4's record of a spoiled world: the cases it ran, what changed, and the subject whose share of those
        cases alone, replayed in a fresh world, reproduces the change (none where no one subject's does)."""
        started = time.monotonic()
        shares: dict[str, list[tuple[CaseSpec, RankTask]]] = defaultdict(list)
        for earlier in history:
            shares[earlier[0].subject].append(earlier)
        reproduced = [subject for subject, share in shares.items()
                      if self._replay_spoils(case, task, share, timeout_s)]
        subject = reproduced[0] if len(reproduced) == 1 else UNATTRIBUTED
        cases = ", ".join(earlier.id for earlier, _ in history)
        blamed = f"replaying only {subject}'s {len(shares[subject])} of them in a fresh world reproduces it" \
            if subject != UNATTRIBUTED else \
            f"replaying each subject's share alone in a fresh world reproduces it for " \
            f"{' and '.join(reproduced) or 'neither'}: not attributed"
        after = "after this case" if len(history) == 1 else f"after these {len(history)} cases"
        message = (f"[{LEFTOVER_CHECK} on {self.cell['backend']}, world size {case.world_size}] {after} in one "
                   f"world, {spoiled['model_class']} built without ZeRO and with no config "
                   f"alive is not its clean structure ({case.id} was not judged there and ran again in a fresh "
                   f"world):\n" + "\n".join(spoiled["differences"]) + f"\n{blamed}\ncases: {cases}")
        record = Record(clause="P4", check=LEFTOVER_CHECK.split("-", 1)[1], subject=subject, model=case.model,
                        head=case.head, layout=None, world_size=case.world_size, dtype=case.dtype, status=FAIL,
                        message=message, duration_s=round(time.monotonic() - started, 3), cell=self.cell,
                        metrics={"spoiled_after": [earlier.id for earlier, _ in history],
                                 "differences": spoiled["differences"], REPRODUCED_BY: reproduced},
                        case_id=self._leftover_id(case, len(history)),
                        variant=case.variant,
                        findings=[make_finding("leftover", spoiled["model_class"],
                                               "the class's clean structure, built without ZeRO",
                                               "; ".join(spoiled["differences"]))])
        return apply_known_issues(record, self.known_issues)

    def _leftover_id(self, case: CaseSpec, cases_before: int) -> str:
        """One id per spoiled world: the class and world it was found in, the case it kept from being judged, and
        which time that case was (a case tried again may meet a spoiled world again)."""
        key = (f"{LEFTOVER_CHECK}[{case.label}-ws{case.world_size}-after-{cases_before}-cases-before-{case.check_id}-"
               f"{case.subject}")
        with self._leftovers_lock:
            self._leftover_ids[key] += 1
            nth = self._leftover_ids[key]
        return f"{key}{f'-{nth}' if nth > 1 else ''}]"

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

    def _record(self, case: CaseSpec, tries: Sequence[Attempt]) -> Record:
        """One record of every try: the most severe outcome's status, message and metrics, all outcomes in order."""
        outcomes = [a.status for a in tries]
        status = most_severe(outcomes)
        worst = next(a for a in tries if a.status == status)
        message = worst.message
        if message and status not in (PASS, SKIP):  # a skip's reason reads the same for every case
            message = f"[{case.id} on {self.cell['backend']}, world size {case.world_size}] {message}"
        if len(tries) > 1:
            fresh = " (the last in a freshly started world)" if tries[-1].fresh else \
                "" if self.pool.restarts else " (all in the launched world, which cannot be started again)"
            tried = f"outcomes of {len(tries)} tries: {', '.join(outcomes)}{fresh}"
            message = f"{message}\n{tried}" if message else tried
        metrics = dict(worst.metrics)
        compared, expected = metrics.pop("compared", {}), metrics.pop("expected_to_compare", {})
        findings = metrics.pop("findings", [])
        record = Record(clause=case.clause, check=case.check, subject=case.subject, model=case.model,
                        head=case.head, layout=case.layout, world_size=case.world_size, dtype=case.dtype, status=status,
                        message=message, duration_s=round(sum(a.seconds for a in tries), 3), cell=self.cell,
                        metrics=metrics, case_id=case.id, outcomes=outcomes, variant=case.variant,
                        sweep=case.key.sweep, compared=compared,
                        expected_to_compare=expected, findings=findings if status == FAIL else [])
        return apply_known_issues(record, self.known_issues)

    def run(self, cases: Iterable[CaseSpec], writer: RecordWriter,
            progress: Callable[[int, int, Record], None] = lambda i, n, r: None,
            parallel_worlds: int = 1) -> list[Record]:
        """Runs every case and writes each record as it comes. A world size's cases run in one world, one
        after another, the subjects of one case together (`run_together`); `parallel_worlds` lanes each take
        the next world size left, largest first (they take longest), and run its cases in a world of their
        own."""
        cases = list(cases)
        # Nodes that share no files with this process each write their own copies first.
        self.pool.on_each_node(f"{__name__}:checkpoints_on_this_node", _checkpoints_of(cases), NODE_CHECKPOINTS_S)
        groups = _by_world_size(cases)
        sizes = deque(sorted(groups, reverse=True))
        total = sum(map(len, groups.values()))
        records: list[Record] = []
        lock = threading.Lock()
        stop = threading.Event()  # set when a lane fails or the run is interrupted: no lane starts another case
        failures: list[BaseException] = []

        def next_size() -> int | None:
            with lock:
                return sizes.popleft() if sizes and not stop.is_set() else None

        def lane() -> None:
            while (size := next_size()) is not None:
                try:
                    for together in _by_case(groups[size]):
                        if stop.is_set():
                            return
                        finished = self.run_together(together)
                        finished += self.take_leftovers()
                        with lock:
                            if stop.is_set():  # interrupted: its world was torn down under it
                                return
                            for record in finished:
                                writer.write(record)
                                records.append(record)
                                progress(len(records), total, record)
                except BaseException as exc:  # noqa: BLE001 - raised to the caller once every lane is back
                    failures.append(exc)
                    stop.set()
                finally:
                    self.pool.release(size)  # done with this world size

        lanes = [threading.Thread(target=lane, name=f"world-lane-{i}", daemon=True)
                 for i in range(max(1, min(parallel_worlds, len(sizes))))]
        try:
            for thread in lanes:
                thread.start()
            for thread in lanes:
                while thread.is_alive():
                    thread.join(0.5)  # in short waits, so that an interrupt reaches this thread
        except BaseException:
            stop.set()
            raise
        finally:
            self.pool.close()
            self.structures.close()
        if failures:
            raise failures[0]
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


STALE_LOCK_S = 15 * 60  # the DeepSpeed op builds in about a minute; a lock this old has no builder left


def clear_stale_build_locks(max_age_s: float = STALE_LOCK_S) -> list[Path]:
    """torch builds a JIT op (DeepSpeed's shm comm op, on every world's first start) under a file `lock` in
    the op's build directory. Up to torch 2.13 the file's mere existence means "held": a build killed
    midway leaves it, and so does torch 2.14, which holds an OS lock on the same file and leaves the file
    behind. Either way every later build by torch <= 2.13 then waits forever, and every world start times
    out. Removes lock files older than any build takes that no process holds an OS lock on."""
    import fcntl

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


def _checkpoints_of(cases: Iterable[CaseSpec]) -> list[tuple[Family, str]]:
    return sorted({(c.family, c.layout) for c in cases if c.family and c.layout and not c.skip}, key=str)


def prepare_checkpoints(cases: Iterable[CaseSpec]) -> None:
    """Writes every checkpoint the cases need before any world starts (ranks only read them)."""
    import transformers

    quiet_environment()
    transformers.utils.logging.disable_progress_bar()  # one "Writing model shards" bar per checkpoint otherwise
    ensure_checkpoints(_checkpoints_of(cases))


def checkpoints_on_this_node(ctx: RankContext, pairs: list[tuple[Family, str]]) -> None:
    """A launched world's task: each rank writes what its node's cache lacks, before any case needs it."""
    ensure_checkpoints(pairs)


def default_out_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")
