"""Peak memory of building one model, measured in a fresh process (clause P3).

A rank process of a persistent world has already built and freed many models, and the C allocator keeps
freed memory for reuse: a construction there could peak without its resident set growing at all. So
each measurement runs in a new Python process (`python -m zero3_conformance.memory SPEC`), which joins a
process group of its own when the build is a ZeRO-3 one, and reports on its last stdout line:

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
from typing import Any, Optional

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
    subject = get_subject(spec["subject"])
    config_object = subject.make_config(spec["ds_config"])
    if spec["build"] == "from_config":
        return config_object, subject.from_config(model_class, AutoConfig.from_pretrained(spec["checkpoint"]))
    return config_object, subject.from_pretrained(model_class, spec["checkpoint"])[0]


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in the fresh process: imports, joins the group, then measures only the construction."""
    import torch

    if spec["subject"] != "baseline":
        import deepspeed

        deepspeed.init_distributed(dist_backend=spec["backend"])
    cuda = spec["backend"] == "nccl"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.reset_peak_memory_stats()
    _build({**spec, "checkpoint": spec["warmup_checkpoint"]})  # one-time costs of the path, not counted
    _release_free_heap()
    before = _status_bytes("VmRSS")["VmRSS"]
    anon_before = _status_bytes("RssAnon").get("RssAnon", 0)
    if not _reset_high_water_mark():
        raise RuntimeError("cannot reset the resident-set high-water mark (/proc/self/clear_refs)")
    sys.setswitchinterval(SAMPLE_INTERVAL_S / 2)  # the sampler gets the GIL back between samples
    sampler = _AnonSampler()
    sampler.start()
    started = time.monotonic()
    try:
        built = _build(spec)
    except Exception as exc:  # noqa: BLE001 - the subject's failure is the finding; the parent classifies it
        sampler.stop()
        return {"raised": f"{type(exc).__name__}: {exc}"[:2000]}
    seconds = time.monotonic() - started
    anon_peak = sampler.stop()
    high_water = _status_bytes("VmHWM")["VmHWM"]
    figures: dict[str, Any] = {
        "peak_mb": round((high_water - before) / MB, 1),
        "peak_anon_mb": round((anon_peak - anon_before) / MB, 1),
        "seconds": round(seconds, 2),
    }
    if cuda:
        figures["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / MB, 1)
    del built
    return figures


def run_probe(spec: dict[str, Any], env: Optional[dict[str, str]] = None, timeout_s: float = 600.0) -> dict[str, Any]:
    """Starts the fresh process and returns its figures; RuntimeError with its stderr tail if it fails."""
    import subprocess

    child_env = {**os.environ, **(env or {}), **ALLOCATOR_ENV}
    done = subprocess.run([sys.executable, "-m", "zero3_conformance.memory", json.dumps(spec)], env=child_env,
                          capture_output=True, text=True, timeout=timeout_s)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"memory probe ({spec['subject']}, {spec['build']}) exited with {done.returncode}: "
                           f"{done.stderr.strip()[-1500:]}")
    return json.loads(lines[-1])


PROBE_TIMEOUT_S = 300.0
_baseline_peaks: dict[tuple[str, str], dict[str, Any]] = {}  # per rank process: the baseline is measured once


def probe_everywhere(rank: int, world_size: int, backend: str, subject: str, build: str, ds_config: dict[str, Any],
                     family: Any, warmup_family: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Called in every rank of a world: each rank starts a fresh process; those form a group of their own
    and build `family` once with `subject`. Then rank 0 measures the baseline's build (no ZeRO) in one more
    fresh process. Returns (every rank's figures, the baseline's; {} on ranks other than 0)."""
    import torch.distributed as dist

    from .world import free_loopback_port
    from .zoo import ensure_checkpoint

    shared: list[Any] = [None, None, None]
    if rank == 0:
        shared = [str(ensure_checkpoint(family, "safetensors")), str(ensure_checkpoint(warmup_family, "safetensors")),
                  free_loopback_port()]
    dist.broadcast_object_list(shared, src=0)
    checkpoint, warmup_checkpoint, port = shared
    spec = {"subject": subject, "build": build, "checkpoint": checkpoint, "ds_config": ds_config, "backend": backend,
            "auto_class": family.auto_class, "warmup_checkpoint": warmup_checkpoint}
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
           "WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(world_size)}
    try:
        figures: dict[str, Any] = run_probe(spec, env, PROBE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - reported once every rank is back, so none waits forever
        figures = {"error": str(exc)}
    everyone: list[Any] = [None] * world_size
    dist.all_gather_object(everyone, figures)
    baseline: dict[str, Any] = {}
    if rank == 0:
        key = (build, checkpoint)
        if key not in _baseline_peaks:
            _baseline_peaks[key] = run_probe({**spec, "subject": "baseline"}, {}, PROBE_TIMEOUT_S)
        baseline = _baseline_peaks[key]
    return everyone, baseline


if __name__ == "__main__":
    from .world import die_with_parent

    die_with_parent()  # a probe outlives nothing it was started for
    print(json.dumps(measure(json.loads(sys.argv[1]))), flush=True)
