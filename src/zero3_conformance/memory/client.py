"""The rank's side of P3's memory probe: starts a probe process (`python -m zero3_conformance.memory.probe`) per
rank, hands it what to build, and gathers every rank's figures; in a launched world the ranks measure
themselves instead."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from ..op_cache import use_own_op_cache
from .probe import ALLOCATOR_ENV, fixed_mmap_threshold, measure


class ProbeProcess:
    """A fresh Python process (`python -m zero3_conformance.memory.probe`) that imports torch, deepspeed and
    transformers once and then measures builds one after another, so only the first measurement pays for
    the imports."""

    def __init__(self, env: dict[str, str] | None = None):
        import subprocess
        import tempfile

        self._stderr = tempfile.TemporaryFile()
        use_own_op_cache()  # the probe's DeepSpeed builds its op where this stack's worlds do
        self._proc = subprocess.Popen([sys.executable, "-m", "zero3_conformance.memory.probe"],
                                      env={**os.environ, **(env or {}), **ALLOCATOR_ENV}, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._stderr, bufsize=0)

    def alive(self) -> bool:
        return self._proc.poll() is None

    def measure(self, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """The figures for `spec`; RuntimeError with the probe's stderr tail if it dies or does not answer."""
        import select
        import subprocess

        what = f"memory probe ({spec['subject']}, {spec['build']})"
        try:
            self._proc.stdin.write(json.dumps(spec).encode() + b"\n")
        except OSError:  # it died before this measurement: its exit is reported below
            pass
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        if not ready:
            tail = self._stderr_tail()
            self.close()
            raise RuntimeError(f"{what} gave no answer within {timeout_s:.0f} s: {tail}")
        line = self._proc.stdout.readline()
        if not line:  # end of file: it is exiting
            try:
                code: int | None = self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                code = None
            raise RuntimeError(f"{what} exited with {code}: {self._stderr_tail()}")
        return json.loads(line)

    def _stderr_tail(self) -> str:
        # pread leaves the file's offset alone: the probe shares it, and may still be writing.
        fd = self._stderr.fileno()
        size = os.fstat(fd).st_size
        return os.pread(fd, 1500, max(0, size - 1500)).decode(errors="replace").strip()

    def close(self) -> None:
        if self.alive():
            self._proc.kill()
        self._proc.wait()
        self._stderr.close()


def run_probe(spec: dict[str, Any], env: dict[str, str] | None = None, timeout_s: float = 600.0) -> dict[str, Any]:
    """One measurement in a probe process of its own."""
    probe = ProbeProcess(env)
    try:
        return probe.measure(spec, timeout_s)
    finally:
        probe.close()


PROBE_TIMEOUT_S = 300.0
# Per rank process of a world: its probe, whose peers (the other ranks' probes) form a process group of their
# own, kept for the next measurement; and the baseline's figures, measured once per build and checkpoint.
_probe: ProbeProcess | None = None
_baseline_peaks: dict[tuple[str, str], dict[str, Any]] = {}
_warmed_here: set[tuple[str, str]] = set()  # build paths a rank that measures itself has warmed up


def _probe_everywhere_alive(rank: int, world_size: int) -> ProbeProcess:
    """Every rank's probe, started where any rank lacks a live one (all start afresh, to form a new group)."""
    import torch.distributed as dist

    from ..worlds.world import free_loopback_port

    global _probe
    alive: list[Any] = [None] * world_size
    dist.all_gather_object(alive, _probe is not None and _probe.alive())
    if _probe is not None and all(alive):
        return _probe
    _retire_probe()
    port = [free_loopback_port() if rank == 0 else None]
    dist.broadcast_object_list(port, src=0)
    _probe = ProbeProcess({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port[0]), "RANK": str(rank),
                           "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                           "LOCAL_WORLD_SIZE": str(world_size)})
    return _probe


def _retire_probe() -> None:
    global _probe
    if _probe is not None:
        _probe.close()
        _probe = None


def _measured_here(spec: dict[str, Any]) -> dict[str, Any]:
    fixed_mmap_threshold()
    return measure(spec, _warmed_here)


def probe_everywhere(rank: int, world_size: int, backend: str, subject: str, build: str, ds_config: dict[str, Any],
                     family: Any, warmup_family: Any, in_process: bool = False,
                     subject_module: str = "zero3_conformance.subjects"
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Called in every rank of a world: each rank's probe process builds `family` once with `subject` (which
    `subject_module` registers), the
    probes forming a process group of their own. Then rank 0's probe measures the baseline's build (no
    ZeRO). Returns (every rank's figures, the baseline's; {} on ranks other than 0). After any failure every
    rank's probe is retired, so the next measurement starts from fresh processes in a fresh group.
    `in_process`: the ranks measure themselves, in their own process group (a world a launcher started,
    whose ranks may not start processes that form groups of their own)."""
    import torch.distributed as dist

    from ..zoo import ensure_checkpoint

    # Each rank's own copy, as in a launched world a node may share no files with rank 0's; rank 0 writes
    # first, so that ranks sharing its files find the copy there instead of writing it again.
    def written_here() -> tuple[str, str]:
        return str(ensure_checkpoint(family, "safetensors")), str(ensure_checkpoint(warmup_family, "safetensors"))

    if rank == 0:
        checkpoint, warmup_checkpoint = written_here()
    dist.barrier()
    if rank != 0:
        checkpoint, warmup_checkpoint = written_here()
    spec = {"subject": subject, "subject_module": subject_module, "build": build, "checkpoint": checkpoint,
            "ds_config": ds_config, "backend": backend,
            "auto_class": family.auto_class, "warmup_checkpoint": warmup_checkpoint}
    try:
        figures: dict[str, Any] = _measured_here(spec) if in_process else \
            _probe_everywhere_alive(rank, world_size).measure(spec, PROBE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - reported once every rank is back, so none waits forever
        figures = {"error": str(exc)}
    everyone: list[Any] = [None] * world_size
    dist.all_gather_object(everyone, figures)
    if any("error" in f or "raised" in f for f in everyone):
        _retire_probe()  # a group some probe left midway cannot be trusted with the next build
    baseline: dict[str, Any] = {}
    if rank == 0:
        key = (build, checkpoint)
        if key not in _baseline_peaks:
            baseline_spec = {**spec, "subject": "baseline"}
            live = _probe is not None and _probe.alive()
            _baseline_peaks[key] = _measured_here(baseline_spec) if in_process else \
                _probe.measure(baseline_spec, PROBE_TIMEOUT_S) if live else \
                run_probe(baseline_spec, timeout_s=PROBE_TIMEOUT_S)
        baseline = _baseline_peaks[key]
    return everyone, baseline
