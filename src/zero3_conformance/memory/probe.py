"""Peak memory of building one model, measured in a probe process of its own (clause P3).

A rank process of a persistent world has already built and freed many models, and the C allocator keeps
freed memory for reuse: a construction there could peak without its resident set growing at all. So
measurements run in a separate Python process per rank (`python -m zero3_conformance.memory.probe`), started
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

    from ..subjects import get_subject
    from ..zoo import auto_class

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


def _size_of(model: Any) -> dict[str, int]:
    """The parameters a build holds and their elements (a ZeRO-3 parameter's full count): a build that lost
    tensors allocates less, and must not pass for it."""
    params = list(model.parameters())
    return {"parameters": len(params), "elements": sum(int(getattr(p, "ds_numel", p.numel())) for p in params)}


def _join_group(backend: str) -> None:
    """Joins this probe's own process group (its ranks are the probes of one world), once."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    from ..worlds.world import join_loopback_group

    join_loopback_group(backend, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["MASTER_PORT"]))
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def measure(spec: dict[str, Any], warmed: set[tuple[str, str]]) -> dict[str, Any]:
    """Runs in the probe process: measures only the construction `spec` names. A build path's one-time costs
    (lazy imports, first use) are paid by a small warm-up build the first time the path is taken."""
    import torch

    from ..subjects import clear_leftover_zero3

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
    figures["built"] = _size_of(built[1] if isinstance(built, tuple) else built)
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


def fixed_mmap_threshold() -> None:
    """What ALLOCATOR_ENV gives a probe, for this process once it is running (glibc's mallopt)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, int(ALLOCATOR_ENV["MALLOC_MMAP_THRESHOLD_"]))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: its allocator's own policy holds



if __name__ == "__main__":
    from ..worlds.world import die_with_parent

    die_with_parent()  # a probe outlives nothing it was started for
    serve()
