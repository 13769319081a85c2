"""Reproduces G4-from_config_init_matches_baseline[transformers-hubert.HubertModel-ws2-fp32]
with transformers, deepspeed and torch alone (no zero3-conformance).

Run it on a CPU machine:   DS_ACCELERATOR=cpu torchrun --nproc-per-node 2 repro.py
On GPUs (NCCL):            torchrun --nproc-per-node 2 repro.py
Exit status 1: the clause is broken here, with the evidence printed; 0: it holds.
"""

from __future__ import annotations

import sys
import contextlib
import hashlib
import importlib
import math
import os
import tempfile
import traceback
from packaging.version import Version
from pathlib import Path
from typing import Any, Callable, Iterator, Optional


# The case, as the harness made it.
CASE_ID = 'G4-from_config_init_matches_baseline[transformers-hubert.HubertModel-ws2-fp32]'
MODEL_TYPE = 'hubert'
CONFIG = {'hidden_size': 64,
 'num_hidden_layers': 2,
 'num_attention_heads': 4,
 'intermediate_size': 128,
 'conv_dim': [32, 32, 32, 32, 32, 32, 32],
 'classifier_proj_size': 64}
MODEL_CLASS = 'HubertModel'
CHECKPOINT_CLASS = 'HubertModel'
LAYOUT = 'safetensors'
WORLD_SIZE = 2
DTYPE = 'fp32'
DS_CONFIG = {'train_micro_batch_size_per_gpu': 1,
 'gradient_accumulation_steps': 1,
 'zero_optimization': {'stage': 3, 'stage3_param_persistence_threshold': 128}}
SHARD_SIZE = '40KB'


# The harness's check and every helper it calls, as the harness has them.


CHECKPOINT_SEED = 1234


DETERMINISTIC_ATOL = 1e-07


DETERMINISTIC_RTOL = 1e-06


class Findings:
    """What a check records on its rank (findings, values every rank must agree on, metrics), the objects it
    keeps alive until the case ends, and the builds it compares: the baseline's and the subject's. A subclass
    gives rank, world_size, device (where collectives put tensors), subject, layout, dtype, ds_config,
    checkpoint_path, model_class() and model_config(); a reproducer's stand-in for the case shares all the rest."""

    def __init__(self) -> None:
        self.findings: list[str] = []
        self.agreed: dict[str, str] = {}
        self.metrics: dict[str, Any] = {}
        # Baseline models live until the case ends: freed, their memory could be handed to a subject's
        # uninitialized tensor, which would then hold exactly the baseline's values and pass.
        self._kept: list[Any] = []
        self._closers: list[Callable[[], Any]] = []

    def on_close(self, closer: Callable[[], Any]) -> None:
        """Runs `closer` when the case ends, whatever its outcome (e.g. destroying an engine)."""
        self._closers.append(closer)

    def close(self) -> None:
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception:  # noqa: BLE001 - the case's verdict is already decided
                pass
        self._closers.clear()
        self._kept.clear()

    def fail(self, message: str) -> None:
        self.findings.append(message)

    def expect(self, condition: bool, message: str) -> bool:
        if not condition:
            self.fail(message)
        return bool(condition)

    def agree(self, key: str, value: Any) -> None:
        """Every rank must record the same value under `key` (tensors are compared by content)."""
        self.agreed[key] = describe_value(value)

    @contextlib.contextmanager
    def subject_call(self, what: str) -> Iterator[None]:
        try:
            yield
        except (NotApplicable, SubjectRaised):
            raise
        except NotConvertible as exc:
            raise NotApplicable(f"{self.subject.name} cannot load this checkpoint: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any exception from the subject is the finding
            tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:]).strip()
            raise SubjectRaised(f"{self.subject.name} raised during {what}: {type(exc).__name__}: {exc}\n{tail}") \
                from exc

    @contextlib.contextmanager
    def baseline_call(self, what: str) -> Iterator[None]:
        """The same call without ZeRO: where it raises, the subject has nothing to be compared with (SKIP
        saying so; every rank raises alike, so none is left waiting in a collective)."""
        try:
            yield
        except (NotApplicable, SubjectRaised):
            raise
        except Exception as exc:  # noqa: BLE001 - the baseline's own failure is not the subject's
            raise NotApplicable(f"without ZeRO, {what} raises: {exception_line(exc)}") from None

    def keep(self, obj: Any) -> Any:
        """Keeps `obj` alive until the case ends (a config object, a baseline model)."""
        self._kept.append(obj)
        return obj

    # --- the baseline's and the subject's builds (a subclass gives model_class, model_config) ------
    def seed(self, offset: int = 0) -> None:
        import torch

        torch.manual_seed(SEED + offset)

    def baseline_from_config(self, seed_offset: int = 0, dtype: Any = None) -> Any:
        """The case's model built with no ZeRO config alive (the baseline)."""
        self.seed(seed_offset)
        cls, config = self.model_class(), self.model_config()
        try:
            with uninitialized_memory_filled():
                model = build_from_config(cls, config, dtype)
        except Exception as exc:  # noqa: BLE001 - without ZeRO there is no contract to check
            raise NotApplicable(f"{cls.__name__} does not build from this config even without ZeRO: "
                                f"{exception_line(exc)}") from None
        return self.keep(model)

    def require_loadable_layout(self) -> None:
        """A layout the installed transformers refuses to read here cannot be checked: neither baseline
        nor subject can load it (SKIP with transformers' own reason)."""
        if self.layout == "bin":
            self.require_bin_loading("the checkpoint is a .bin file")

    def require_bin_loading(self, why: str) -> None:
        """SKIP (saying `why` the check needs it) where transformers refuses to read .bin checkpoints."""
        import torch
        import transformers

        refusal = torch_load_refusal()
        if refusal:
            raise NotApplicable(f"transformers {transformers.__version__} reads no .bin checkpoint with torch "
                                f"{torch.__version__} ({why}): {refusal}")

    def baseline_from_pretrained(self, dtype: Any = None) -> tuple[Any, dict[str, Any]]:
        self.require_loadable_layout()
        self.seed()
        cls = self.model_class()
        try:
            with uninitialized_memory_filled():
                model, info = cls.from_pretrained(self.checkpoint_path, output_loading_info=True,
                                                  trust_remote_code=False, **dtype_kwarg(dtype))
        except Exception as exc:  # noqa: BLE001 - without ZeRO there is no contract to check
            raise NotApplicable(f"{cls.__name__} does not load this checkpoint even without ZeRO: "
                                f"{exception_line(exc)}") from None
        return self.keep(model), info

    def zero3_from_config(self) -> tuple[Any, Any]:
        """(config object, model) built by the subject under its stage-3 config."""
        with self.subject_call("config construction"):
            config_object = self.subject.make_config(self.ds_config)
        self.seed()
        with self.subject_call("from_config"):
            model = self.subject.from_config(self.model_class(), self.model_config())
        return config_object, model

    def zero3_from_pretrained(self, model_class: Any = None, path: Any = None,
                              ds_config: Optional[dict[str, Any]] = None, what: str = "",
                              **options: Any) -> tuple[Any, Any, dict[str, Any]]:
        """(config object, model, loading report) from the subject under its stage-3 config: the case's class,
        checkpoint and config unless given; `options` are from_pretrained's, `what` names them in findings."""
        self.require_loadable_layout()
        with self.subject_call("config construction"):
            config_object = self.subject.make_config(self.ds_config if ds_config is None else ds_config)
        self.seed()
        with self.subject_call(f"from_pretrained({what or self.layout})"):
            model, info = self.subject.from_pretrained(model_class or self.model_class(),
                                                       str(path or self.checkpoint_path), **options)
        return config_object, model, info


MAX_LISTED = 8


MIN_STATISTICS = 16


class NotApplicable(Exception):
    """The check does not apply to this case (becomes SKIP with this reason)."""


class NotConvertible(NotImplementedError):
    """A conversion the installed transformers declares that the reference does not re-implement: the
    reference cannot load that checkpoint (a SKIP that says so, not a finding about the subject)."""


SEED = 20260101


SIGMAS = 6.0


class SubjectRaised(Exception):
    """The subject raised while doing what the clause asks (becomes FAIL carrying that exception)."""


def _deterministic_keys(case: Case) -> set[str]:
    """Tensors the baseline init computes identically under two different seeds."""
    import torch

    first = full_parameters(case.baseline_from_config(seed_offset=0))
    second = full_parameters(case.baseline_from_config(seed_offset=1))
    return {k for k in first if first[k].numel() > 0 and torch.equal(first[k], second[k])}


def _first_attr(candidates: list[tuple[str, str]]) -> Any:
    errors = []
    for module, name in candidates:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            errors.append(f"{module}.{name}: {exc}")
    raise ImportError("none of these exist in the installed version: " + "; ".join(errors))


def _first_difference(expected: Any, got: Any) -> str:
    import torch

    e, g = expected.detach().double().reshape(-1), got.detach().double().reshape(-1)
    differs = (e != g) & ~(torch.isnan(e) & torch.isnan(g))
    count = int(differs.sum())
    index = int(differs.nonzero()[0]) if count else 0
    position = _position(index, expected.shape)
    diff = (e - g).abs()
    return (f"{count}/{e.numel()} elements differ, max |diff| {float(diff[differs].max()) if count else 0:.3g}; "
            f"first at {position}: expected {float(e[index]):.9g}, got {float(g[index]):.9g}")


def _position(flat_index: int, shape: Any) -> tuple[int, ...]:
    import torch

    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), tuple(shape))) if len(shape) else ()


def _report(case: Case, problems: list[str], what: str) -> None:
    for problem in problems[:MAX_LISTED]:
        case.fail(f"{problem} (rank {case.rank})")
    if len(problems) > MAX_LISTED:
        case.fail(f"... and {len(problems) - MAX_LISTED} more {what} (rank {case.rank})")


def auto_class(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


def build_from_config(model_class: Any, config: Any, dtype: Any = None) -> Any:
    """`from_config` of an Auto class, `_from_config` of a concrete one (which has no public from_config):
    the model the installed transformers builds from `config` in the current context."""
    if hasattr(model_class, "_model_mapping"):
        return model_class.from_config(config, **dtype_kwarg(dtype))
    return model_class._from_config(config, **dtype_kwarg(dtype))


def compare_all(case: Case, expected: dict[str, Any], got: dict[str, Any],
                compare: Callable[[str, Any, Any], Optional[str]], what: str) -> None:
    """Compares every expected tensor with the ZeRO-3 model's; every rank must also see the same values. A
    tensor the baseline leaves undefined is not compared: it is listed in the record's metrics, and a case
    with nothing else to compare is a SKIP saying so."""
    unwritten = undefined(expected)
    if unwritten:
        listed = case.metrics.setdefault("undefined_without_zero", [])
        listed.extend(key for key in unwritten if key not in listed)
        if len(unwritten) == len(expected):
            raise NotApplicable(f"without ZeRO, transformers leaves {', '.join(unwritten)} uninitialized (memory "
                                f"no init wrote, filled with NaN here): there is nothing to compare with")
    problems = []
    for key, tensor in sorted(expected.items()):
        if key not in got:
            problems.append(f"{key}: missing from the ZeRO-3 model's state dict")
            continue
        if key in unwritten:
            case.agree(key, got[key])
            continue
        problem = compare(key, tensor, got[key])
        if problem:
            problems.append(problem)
        case.agree(key, got[key])
    _report(case, problems, what)


def describe_value(value: Any) -> str:
    try:
        import torch

        if isinstance(value, torch.Tensor):
            data = value.detach().cpu().contiguous().reshape(-1)  # 0-dim tensors cannot be viewed as bytes
            digest = hashlib.sha1(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()[:12]
            total = float(data.double().sum()) if data.numel() else 0.0
            return f"tensor{tuple(value.shape)} {data.dtype} sum={total:.9g} sha1={digest}"
    except ImportError:
        pass
    return repr(value)


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """from_config / from_pretrained take `dtype` from 4.56 on and `torch_dtype` before."""
    if dtype is None:
        return {}
    return {"dtype" if transformers_version() >= Version("4.56") else "torch_dtype": dtype}


def exception_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def from_config_init_matches_baseline(case: Case) -> None:
    """from_config initializes every parameter as the baseline's init does, identically on every rank."""
    expected = full_parameters(case.baseline_from_config())
    deterministic = _deterministic_keys(case)
    config_object, model = case.zero3_from_config()
    compare_all(case, expected, gathered_state(model),
                lambda key, want, got: init_mismatch(key, want, got, key in deterministic),
                "tensors initialized wrongly")
    case.metrics["deterministic_tensors"] = len(deterministic)


def full_parameters(model: Any) -> dict[str, Any]:
    """name -> a detached copy of every parameter and persistent buffer (call inside a gather)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def gathered_state(model: Any) -> dict[str, Any]:
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        return full_parameters(model)


def hf_deepspeed_config_class() -> type:
    return _first_attr([
        ("transformers.integrations", "HfDeepSpeedConfig"),
        ("transformers.integrations.deepspeed", "HfDeepSpeedConfig"),
        ("transformers.deepspeed", "HfDeepSpeedConfig"),
    ])


def hf_is_deepspeed_zero3_enabled() -> Callable[[], bool]:
    return _first_attr([
        ("transformers.integrations", "is_deepspeed_zero3_enabled"),
        ("transformers.integrations.deepspeed", "is_deepspeed_zero3_enabled"),
        ("transformers.deepspeed", "is_deepspeed_zero3_enabled"),
    ])


def init_mismatch(name: str, baseline: Any, got: Any, deterministic: bool) -> Optional[str]:
    """None if `got` is initialized as the baseline's own init would have initialized it."""
    import torch

    if tuple(got.shape) != tuple(baseline.shape):
        return f"{name}: shape expected {tuple(baseline.shape)}, got {tuple(got.shape)}"
    if got.dtype != baseline.dtype:
        return f"{name}: dtype expected {baseline.dtype}, got {got.dtype}"
    b, g = baseline.detach().double(), got.detach().double()
    unexpected = ~torch.isfinite(g) & (g != b)  # an init may set a bound to +-inf on purpose, as the baseline does
    if unexpected.any():
        return f"{name}: {int(unexpected.sum())} non-finite values (uninitialized memory?)"
    finite = torch.isfinite(b)
    if not finite.all():
        b, g = b[finite], g[finite]
    if deterministic:
        if torch.allclose(g, b, rtol=DETERMINISTIC_RTOL, atol=DETERMINISTIC_ATOL):
            return None
        return f"{name} (deterministic init): {_first_difference(baseline, got)}"
    for value in (0.0, 1.0):
        fixed = b == value
        if fixed.any() and not torch.equal(g[fixed], b[fixed]):
            wrong = int((g[fixed] != value).sum())
            return f"{name}: {wrong} of the {int(fixed.sum())} elements the baseline sets to exactly {value:g} are not"
    free = ~((b == 0) | (b == 1))
    if not free.any():
        return None
    b, g = b[free], g[free]
    n = b.numel()
    if n < MIN_STATISTICS:  # a few random draws (e.g. a scalar gate) say nothing about the distribution they came from
        return None
    b_std = float(b.std()) if n > 1 else 0.0
    g_std = float(g.std()) if n > 1 else 0.0
    mean_tol = SIGMAS * b_std * math.sqrt(2.0 / n) + 1e-12
    std_tol = SIGMAS * b_std / math.sqrt(max(n - 1, 1)) + 1e-12
    if abs(float(g.mean()) - float(b.mean())) > mean_tol or abs(g_std - b_std) > std_tol:
        return (f"{name}: init statistics differ from the baseline's: mean {float(g.mean()):.4g} (baseline "
                f"{float(b.mean()):.4g}, tolerance {mean_tol:.2g}), std {g_std:.4g} (baseline {b_std:.4g}, "
                f"tolerance {std_tol:.2g}), n={n}")
    return None


def seeded_checkpoint_model(class_name: str, config: Any) -> Any:
    """The model a checkpoint of `class_name` holds: its own init, then every tensor the checkpoint saves
    (parameters and floating persistent buffers) moved off it deterministically, so a loader that skips a
    tensor (or leaves it at its init, ones or zeros) cannot pass by accident."""
    import torch

    torch.manual_seed(CHECKPOINT_SEED)
    model = build_from_config(auto_class(class_name), config)
    saved = set(model.state_dict())
    buffers = [b for name, b in model.named_buffers() if name in saved and b.is_floating_point()]
    generator = torch.Generator().manual_seed(CHECKPOINT_SEED)
    with torch.no_grad():
        for tensor in [*model.parameters(), *buffers]:  # tied parameters are visited once
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
            tensor.add_((0.05 * noise).to(tensor.dtype))
    return model


def torch_load_refusal() -> Optional[str]:
    """Why the installed transformers refuses to read `.bin` checkpoints (torch.load) with the installed
    torch, or None: from 4.57 (at the latest) it requires torch >= 2.6 there (CVE-2025-32434)."""
    try:
        check = _first_attr([("transformers.utils.import_utils", "check_torch_load_is_safe")])
    except ImportError:
        return None
    try:
        check()
    except ValueError as exc:
        return str(exc).strip().splitlines()[0]
    return None


def transformers_version() -> Version:
    import transformers

    return Version(transformers.__version__)


def undefined(tensors: dict[str, Any]) -> list[str]:
    """Floating tensors holding NaN. Baselines are built with uninitialized memory filled with NaN
    (compat.uninitialized_memory_filled), so in a baseline these hold memory no init wrote: without ZeRO their
    values are undefined, and a ZeRO-3 model's cannot be compared with them."""
    import torch

    return sorted(k for k, t in tensors.items() if t.is_floating_point() and bool(torch.isnan(t).any()))


@contextlib.contextmanager
def uninitialized_memory_filled() -> Iterator[None]:
    """Memory a tensor is created in without values (torch.empty, to_empty) holds NaN inside, integers their
    maximum (torch's deterministic fill, from 2.1): a baseline tensor that no init writes shows as NaN instead
    of whatever the allocator handed back, which a subject could match or miss by chance."""
    import warnings

    import torch

    deterministic = getattr(torch.utils, "deterministic", None)
    if deterministic is None or not hasattr(deterministic, "fill_uninitialized_memory"):
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              deterministic.fill_uninitialized_memory)
    # The fill is on only while deterministic algorithms are; warn_only keeps every op available.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")
        torch.use_deterministic_algorithms(True, warn_only=True)
        deterministic.fill_uninitialized_memory = True
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])
            deterministic.fill_uninitialized_memory = before[2]


# What stands in for the harness: the case, the subject (transformers), the world.


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


if __name__ == "__main__":
    sys.exit(main(from_config_init_matches_baseline))
