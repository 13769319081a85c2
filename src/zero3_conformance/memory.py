"""Peak memory of building one model, measured in a probe process of its own (clause P3).

A rank process of a persistent world has already built and freed many models, and the C allocator keeps
freed memory for reuse: a construction there could peak without its resident set growing at all. So
measurements run in a separate Python process per rank (`python -m zero3_conformance.memory`), started
with a fixed mmap threshold, whose probes form a process group of their own for ZeRO-3 builds. A probe
imports once and measures builds one after another, each taking one line of JSON on stdin and answering
with one line of figures on stdout. What one build frees cannot hide the next one's peak: every block of
128 KiB or more is its own mapping, returned to the OS when freed, and the rest of the free heap is handed
back (malloc_trim) before each measurement. The same build measured first in a fresh probe and later in a
used one agrees to within 2 MB. The figures:

- `peak_mb`: the resident-set high-water mark (VmHWM) during construction, less the resident set just
  before it. The mark is reset right before construction (writing 5 to /proc/self/clear_refs); freed
  memory from the imports is handed back to the OS first (malloc_trim), so construction cannot reuse it
  unseen. VmHWM counts every resident page, including pages of a checkpoint file the loader has mapped.
- `peak_anon_mb`: the same for anonymous memory only (RssAnon, what the process allocated itself), taken
  by sampling every millisecond; file pages it leaves out are shared by every rank through the page cache.
  Where no file is mapped (from_config) it agrees with the high-water mark to within a megabyte, which
  shows the sampling catches the peak.
- `cuda_peak_mb` on a GPU: the caching allocator's peak (`torch.cuda.max_memory_allocated`).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time
from typing import Any

MB = 1024 * 1024
# glibc's malloc raises its mmap threshold as large blocks are freed, then serves them from heaps it keeps:
# a build that frees each module's full tensor after partitioning it would show the allocator's retention
# as resident memory. A fixed threshold puts every block of 128 KiB or more in its own mapping, unmapped
# on free, so the resident set follows the live tensors.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
SAMPLE_INTERVAL_S = 0.001


def _status_bytes(*fields: str) -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in fields:
                values[key] = int(value.split()[0]) * 1024
    return values


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _release_free_heap() -> None:
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing retained that we can release


class _AnonSampler(threading.Thread):
    """Largest RssAnon seen while running."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _status_bytes("RssAnon").get("RssAnon", 0)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, _status_bytes("RssAnon").get("RssAnon", 0))
            time.sleep(SAMPLE_INTERVAL_S)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, _status_bytes("RssAnon").get("RssAnon", 0))
        return self.peak


def _build(spec: dict[str, Any]) -> Any:
    """Builds what `spec` names; returns what must stay alive until the measurement ends."""
    import torch
    from transformers import AutoConfig

    from .subjects import get_subject
    from .zoo import auto_class

    model_class = auto_class(spec["auto_class"])
    torch.manual_seed(0)
    if spec["subject"] == "baseline":
        if spec["build"] == "from_config":
            config = AutoConfig.from_pretrained(spec["checkpoint"])
            return model_class.from_config(config)
        return model_class.from_pretrained(spec["checkpoint"], trust_remote_code=False)
    subject = get_subject(spec["subject"], spec["subject_module"])
    config_object = subject.make_config(spec["ds_config"])
    if spec["build"] == "from_config":
        return config_object, subject.from_config(model_class, AutoConfig.from_pretrained(spec["checkpoint"]))
    return config_object, subject.from_pretrained(model_class, spec["checkpoint"])[0]


def _join_group(backend: str) -> None:
    """Joins this probe's own process group (its ranks are the probes of one world), once."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    from .world import join_loopback_group

    join_loopback_group(backend, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["MASTER_PORT"]))
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def measure(spec: dict[str, Any], warmed: set[tuple[str, str]]) -> dict[str, Any]:
    """Runs in the probe process: measures only the construction `spec` names. A build path's one-time costs
    (lazy imports, first use) are paid by a small warm-up build the first time the path is taken."""
    import torch

    from .subjects import clear_leftover_zero3

    if spec["subject"] != "baseline":
        _join_group(spec["backend"])
    path = (spec["subject"], spec["build"])
    if path not in warmed:
        _build({**spec, "checkpoint": spec["warmup_checkpoint"]})
        clear_leftover_zero3()
        warmed.add(path)
    cuda = spec["backend"] == "nccl"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    _release_free_heap()
    before = _status_bytes("VmRSS")["VmRSS"]
    anon_before = _status_bytes("RssAnon").get("RssAnon", 0)
    if not _reset_high_water_mark():
        raise RuntimeError("cannot reset the resident-set high-water mark (/proc/self/clear_refs)")
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(SAMPLE_INTERVAL_S / 2)  # the sampler gets the GIL back between samples
    sampler = _AnonSampler()
    sampler.start()
    started = time.monotonic()
    try:
        built = _build(spec)
    except Exception as exc:  # noqa: BLE001 - the subject's failure is the finding; the parent classifies it
        return {"raised": f"{type(exc).__name__}: {exc}"[:2000]}
    finally:
        seconds = time.monotonic() - started
        anon_peak = sampler.stop()
        sys.setswitchinterval(switch_interval)
    high_water = _status_bytes("VmHWM")["VmHWM"]
    figures: dict[str, Any] = {
        "peak_mb": round((high_water - before) / MB, 1),
        "peak_anon_mb": round((anon_peak - anon_before) / MB, 1),
        "seconds": round(seconds, 2),
    }
    if cuda:
        figures["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / MB, 1)
    del built
    left = clear_leftover_zero3()  # a build whose registration outlives its objects must not shape the next
    if left:
        figures["left_zero3_on"] = left
    return figures


def serve() -> None:
    """The probe process's loop: one spec per line on stdin, one line of figures per spec on stdout."""
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the libraries print goes to stderr: stdout carries only the figures
    warmed: set[tuple[str, str]] = set()
    for line in sys.stdin:
        print(json.dumps(measure(json.loads(line), warmed)), file=results, flush=True)


class ProbeProcess:
    """A fresh Python process (`python -m zero3_conformance.memory`) that imports torch, deepspeed and
    transformers once and then measures builds one after another, so only the first measurement pays for
    the imports."""

    def __init__(self, env: dict[str, str] | None = None):
        import subprocess
        import tempfile

        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen([sys.executable, "-m", "zero3_conformance.memory"],
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

    from .world import free_loopback_port

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


def _fixed_mmap_threshold() -> None:
    """What ALLOCATOR_ENV gives a probe, for this process once it is running (glibc's mallopt)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, int(ALLOCATOR_ENV["MALLOC_MMAP_THRESHOLD_"]))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: its allocator's own policy holds


def _measured_here(spec: dict[str, Any]) -> dict[str, Any]:
    _fixed_mmap_threshold()
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

    from .zoo import ensure_checkpoint

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


if __name__ == "__main__":
    from .world import die_with_parent

    die_with_parent()  # a probe outlives nothing it was started for
    serve()
