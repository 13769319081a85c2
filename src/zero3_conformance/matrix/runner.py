"""Runs a profile's cells, each in its own tox environment, and keeps going past cells that break.

Each cell gets a run directory named after it, holding the run's records and its cell file: whether its
environment installed, whether the libraries imported, and how the run ended. A cell that cannot be
installed or imported is recorded as such, with the resolver's or the import's message, never as a
test failure and never dropped.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Callable

from ..cell import (
    COMPLETE,
    NOT_IMPORTABLE,
    NOT_INSTALLABLE,
    RUN_FAILED,
    SERVED,
)
from ..rundir import RunDir
from . import Cell

IMPORT_CHECK = "import torch, deepspeed, transformers, accelerate, zero3_conformance"
OUT_ENV = "ZERO3_CONFORMANCE_MATRIX_OUT"  # where tox.ini's command writes a cell's run directory
TAIL_CHARS = 3000


def _tail(done: subprocess.CompletedProcess) -> str:
    return (done.stdout + done.stderr)[-TAIL_CHARS:].strip()


def _write_cell_file(run_dir: Path, cell: Cell, extras: Sequence[str], status: str, message: str, seconds: float,
                     exit_status: int | None = None) -> dict:
    info = {"cell": cell.name, "pins": dataclasses.asdict(cell), "extra_packages": list(extras), "status": status,
            "message": message, "exit_status": exit_status, "seconds": round(seconds, 1)}
    RunDir(run_dir).write_cell(info)
    return info


def run_cell(cell: Cell, out_root: Path, tox: list[str], project: Path, run_args: Sequence[str],
             extras: Sequence[str] = ()) -> dict:
    """Installs, import-checks and runs one cell through tox (tox.ini pins its versions and `extras`);
    returns what its cell file says."""
    import os

    started = time.monotonic()
    run_dir = out_root / cell.name
    env = {**os.environ, OUT_ENV: str(out_root.resolve())}

    def tox_call(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*tox, *args], cwd=project, env=env, capture_output=True, text=True)

    installed = tox_call("run", "-e", cell.name, "--notest")
    if installed.returncode != 0:
        return _write_cell_file(run_dir, cell, extras, NOT_INSTALLABLE, _tail(installed), time.monotonic() - started)
    imported = tox_call("exec", "-e", cell.name, "--", "python", "-c", IMPORT_CHECK)
    if imported.returncode != 0:
        return _write_cell_file(run_dir, cell, extras, NOT_IMPORTABLE, _tail(imported), time.monotonic() - started)
    ran = tox_call("run", "-e", cell.name, "--", "--quiet", *run_args)
    # The run exits 0 (all passed) or 1 (findings): both are complete runs. Anything else broke the run.
    finished = ran.returncode in (0, 1)
    ended = RunDir(run_dir).completion()
    if finished and ended.finished:
        status, message = COMPLETE, ended.note
    elif finished and (served := RunDir(run_dir).read_served()) is not None:
        status, message = SERVED, f"this node's ranks {served['ranks']} served rank 0 at {served['served']}, " \
                                  f"whose node holds the records"
    else:  # a run that ended without recording its end did not finish what it planned
        status, message = RUN_FAILED, "\n".join(filter(None, [ended.note if finished else "", _tail(ran)]))
    return _write_cell_file(run_dir, cell, extras, status, message, time.monotonic() - started,
                            exit_status=ran.returncode)


def served_elsewhere(run_dirs: Sequence[Path]) -> dict[Path, dict]:
    """The cells (their cell files) whose ranks on this node served another node's rank 0, which holds their
    records: no cell of this node's report, and the run's outcome is the exit status rank 0 sent."""
    return {d: info for d in run_dirs if (info := RunDir(d).read_cell() or {}).get("status") == SERVED}


def run_profile(cells: list[Cell], out_root: Path, tox: list[str], project: Path,
                run_args: Mapping[str, Sequence[str]], resume: bool = False,
                progress: Callable[[int, int, Cell, dict], None] = lambda *a: None, jobs: int = 1,
                extras: Mapping[str, Sequence[str]] = {}) -> list[Path]:
    """Runs every cell with its `run_args` and `extras` (by cell name), `jobs` at a time (each cell's worlds
    use as many processes as their world size, so one at a time suits a 2-core machine); with `resume`,
    cells that already finished are kept as they are."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    def one(cell: Cell) -> dict:
        previous = RunDir(out_root / cell.name).read_cell() if resume else None
        if previous is not None and previous.get("status") != RUN_FAILED:
            return previous
        return run_cell(cell, out_root, tox, project, run_args.get(cell.name, ()), extras.get(cell.name, ()))

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(one, cell): cell for cell in cells}
        for index, future in enumerate(as_completed(futures), 1):
            progress(index, len(cells), futures[future], future.result())
    return [out_root / cell.name for cell in cells]
