"""The part of every reproducer that stands in for the harness: copied verbatim into repro.py.

Nothing here imports zero3_conformance: a generated script runs where only torch, deepspeed and transformers
are installed. The block between the CASE markers is replaced with the case's literals; the check function
and the harness helpers it calls are appended after it, as the harness has them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

# --- HARNESS --- (in repro.py these are the harness's own functions, appended after the prelude)
from ..checks.base import Findings, NotApplicable, SubjectRaised
from ..compat import (
    build_from_config,
    dtype_kwarg,
    hf_deepspeed_config_class,
    hf_is_deepspeed_zero3_enabled,
)
from ..zoo import seeded_checkpoint_model

# --- END HARNESS ---

# --- CASE ---
CASE_ID = ""
MODEL_TYPE = ""
CONFIG: dict[str, Any] = {}
MODEL_CLASS = ""
CHECKPOINT_CLASS = ""
LAYOUT = "safetensors"
WORLD_SIZE = 2
DTYPE = "fp32"
DS_CONFIG: dict[str, Any] = {}
SHARD_SIZE = ""
# --- END CASE ---


def make_config() -> Any:
    import transformers

    return transformers.AutoConfig.for_model(MODEL_TYPE, **CONFIG)


def write_checkpoint(out: Path) -> Path:
    """The harness's checkpoint: the model's own init under CHECKPOINT_SEED, every saved tensor moved off it by
    0.05 * N(0, 1) (so a tensor left unloaded shows), saved by transformers in LAYOUT."""
    import torch

    model = seeded_checkpoint_model(CHECKPOINT_CLASS, make_config())
    model.save_pretrained(out, max_shard_size=SHARD_SIZE if LAYOUT == "sharded" else "1GB")
    if LAYOUT == "bin":  # the legacy format, as older releases wrote it
        from safetensors.torch import load_file

        torch.save(load_file(str(out / "model.safetensors")), out / "pytorch_model.bin")
        (out / "model.safetensors").unlink()
    return out


class Transformers:
    """The subject: transformers' own HfDeepSpeedConfig, from_config and from_pretrained."""

    name = "transformers"

    def make_config(self, source: Any) -> Any:
        return hf_deepspeed_config_class()(source)

    def is_zero3_enabled(self) -> bool:
        return bool(hf_is_deepspeed_zero3_enabled()())

    def from_config(self, model_class: Any, config: Any, dtype: Any = None) -> Any:
        return build_from_config(model_class, config, dtype)

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None, **options: Any) -> Any:
        return model_class.from_pretrained(path, output_loading_info=True, **dtype_kwarg(dtype), **options)


class Case(Findings):
    """What the harness's check sees of its case, on this rank, with transformers as the subject."""

    def __init__(self, rank: int, world_size: int, checkpoint_path: str):
        import torch

        super().__init__()
        self.subject = Transformers()
        self.rank, self.world_size = rank, world_size
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
        self.checkpoint_path, self.layout, self.dtype, self.ds_config = checkpoint_path, LAYOUT, DTYPE, DS_CONFIG

    def model_class(self) -> Any:
        import transformers

        return getattr(transformers, MODEL_CLASS)

    def model_config(self) -> Any:
        return make_config()


def main(check: Callable[[Case], None]) -> int:
    """Joins the world torchrun started, runs the check on this rank, and has rank 0 print every rank's
    findings and any value the ranks disagree on. Every rank returns 1 where the clause is broken, else 0."""
    import deepspeed
    import torch
    import torch.distributed as dist

    with tempfile.TemporaryDirectory(prefix="repro-") as scratch:
        # Each rank writes its own copy, before joining the world: transformers saves on rank 0 only once
        # a process group exists, and ranks on other machines share no files.
        checkpoint = write_checkpoint(Path(scratch) / "checkpoint")
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        rank, world_size = dist.get_rank(), dist.get_world_size()
        case = Case(rank, world_size, str(checkpoint))
        skipped = ""
        try:
            check(case)
        except NotApplicable as exc:
            skipped = str(exc)
        except SubjectRaised as exc:
            # The other ranks may be inside a collective this rank will now never join: it says what raised,
            # and leaves (torchrun then ends the others).
            print(f"{CASE_ID} at world size {world_size}\nrank {rank}: {exc}\nBROKEN: the clause does not hold",
                  flush=True)
            os._exit(1)
        finally:
            case.close()
        reports: list[Any] = [None] * world_size
        dist.all_gather_object(reports, (case.findings, case.agreed, skipped))
    findings = [f"rank {other}: {finding}" for other, (found, _, _) in enumerate(reports) for finding in found]
    first = reports[0][1]
    disagreements = [f"{key}: rank {other} saw {agreed.get(key)}, rank 0 saw {first.get(key)}"
                     for other, (_, agreed, _) in enumerate(reports[1:], 1)
                     for key in sorted(set(agreed) | set(first)) if agreed.get(key) != first.get(key)]
    broken = bool(findings or disagreements)
    if rank == 0:
        print(f"{CASE_ID} at world size {world_size}")
        for line in findings + disagreements[:20]:
            print(line)
        for other, (_, _, skip) in enumerate(reports):
            if skip:
                print(f"rank {other}: the check does not apply here: {skip}")
        print("BROKEN: the clause does not hold" if broken else "HOLDS: no finding")
    dist.barrier()
    return 1 if broken else 0
