"""A class's clean structure: the names, shapes and dtypes of the parameters and persistent buffers, and the tied
groups, of the model `from_config` builds from a family's config, derived in a process that has never entered
zero.Init (nor imported DeepSpeed).

A rank's own build without ZeRO is no reference for what a class is: a ZeRO-3 build earlier in the same process
can leave patched constructors behind (deepspeed before 0.15.1 made classes without an `__init__` of their own
build with no parameters at all, with or without a config), and a baseline built there agrees with an equally
empty subject. The structure comes from a separate process instead, one per run (`StructureOracle`), built on
the CPU as a user's build is (a meta-device build may differ: transformers 5.0.0 ties no weights there) and,
where that raises, on the meta device.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import threading
from typing import Any

from .errors import exception_line
from .finding_kinds import Found

STRUCTURE_TIMEOUT_S = 300.0  # one class's build; the sweep's largest tiny models build in seconds
SHOWN = 8  # names listed per kind of difference
STRUCTURE_MODULE = "zero3_conformance.structure"  # the oracle's process runs this module


@dataclasses.dataclass(frozen=True)
class Structure:
    """What `from_config` builds for one class and config, outside any ZeRO context."""
    model_class: str  # the concrete class built
    parameters: dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype), shared parameters once
    buffers: dict[str, tuple[tuple[int, ...], str]]  # persistent buffers only: they are in the state dict
    tied: tuple[tuple[str, ...], ...]  # names that refer to one shared parameter
    built_on: str  # "cpu", or "meta (the CPU build raised ...)"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Structure:
        def entries(kind: str) -> dict[str, tuple[tuple[int, ...], str]]:
            return {name: (tuple(shape), dtype) for name, (shape, dtype) in data[kind].items()}

        return cls(data["model_class"], entries("parameters"), entries("buffers"),
                   tuple(tuple(group) for group in data["tied"]), data["built_on"])

    def state_dict_keys(self) -> set[str]:
        """Every name a state dict of the model holds: each name of a tied parameter, and persistent buffers."""
        return {*self.parameters, *(name for group in self.tied for name in group), *self.buffers}

    def size(self) -> str:
        return f"{len(self.parameters)} parameters and {len(self.buffers)} persistent buffers"

    def elements(self) -> int:
        """The parameters' elements, each shared parameter once."""
        return sum(math.prod(shape) for shape, _ in self.parameters.values())


class NoStructure(Exception):
    """The class builds neither on the meta device nor on the CPU in a fresh process."""


def tied_groups(model: Any) -> list[tuple[str, ...]]:
    """Names that refer to one shared parameter, for every parameter that has more than one name."""
    names: dict[int, list[str]] = {}
    for key, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(key)
    return sorted(tuple(group) for group in names.values() if len(group) > 1)


def persistent_buffers(model: Any) -> dict[str, Any]:
    """name -> buffer, for the buffers a state dict holds (not those registered persistent=False)."""
    found = {}
    for prefix, module in model.named_modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and name not in module._non_persistent_buffers_set:
                found[f"{prefix}.{name}" if prefix else name] = buffer
    return found


def shape_of(tensor: Any) -> tuple[int, ...]:
    """A tensor's full shape: a ZeRO-3 parameter's `ds_shape` (its local tensor is an empty placeholder)."""
    return tuple(getattr(tensor, "ds_shape", None) or tensor.shape)


def structure_of(model: Any, built_on: str) -> Structure:
    def entry(tensor: Any) -> tuple[tuple[int, ...], str]:
        return shape_of(tensor), str(tensor.dtype).removeprefix("torch.")

    return Structure(type(model).__name__, {name: entry(p) for name, p in model.named_parameters()},
                     {name: entry(b) for name, b in persistent_buffers(model).items()},
                     tuple(tied_groups(model)), built_on)


def differences(structure: Structure, model: Any, what: str, dtypes: bool, partitioned: bool) -> list[Found]:
    """How `model` differs from the clean structure, both ways: parameters and persistent buffers missing or
    extra, other shapes, other dtypes where `dtypes`; [] where it agrees. Where `partitioned` (a ZeRO-3 build), a
    parameter's shape is its `ds_shape`; elsewhere its own (a build without ZeRO holds whole tensors)."""
    shape = shape_of if partitioned else (lambda tensor: tuple(tensor.shape))
    found: list[Found] = []
    built = {"parameters": dict(model.named_parameters()), "persistent buffers": persistent_buffers(model)}
    clean = {"parameters": structure.parameters, "persistent buffers": structure.buffers}
    for kind, tensors in built.items():
        want = clean[kind]
        missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
        if missing:
            found.append(Found(
                f"{what} lacks {len(missing)} of the {len(want)} {kind} of {structure.model_class}'s clean "
                f"structure: {', '.join(missing[:SHOWN])}{' ...' if len(missing) > SHOWN else ''}",
                "parameters_missing", ", ".join(missing[:SHOWN]), f"{len(want)} {kind} of {structure.model_class}",
                f"{len(want) - len(missing)} present, {len(missing)} missing"))
        if extra:
            found.append(Found(
                f"{what} has {len(extra)} {kind} {structure.model_class}'s clean structure lacks: "
                f"{', '.join(extra[:SHOWN])}{' ...' if len(extra) > SHOWN else ''}",
                "parameters_extra", ", ".join(extra[:SHOWN]), f"{len(want)} {kind} of {structure.model_class}",
                f"{len(extra)} more"))
        for name in sorted(set(want) & set(tensors)):
            clean_shape, dtype = want[name]
            if shape(tensors[name]) != clean_shape:
                found.append(Found(f"{what}: {name} has shape {shape(tensors[name])}, its clean structure "
                                   f"{clean_shape}", "shape_differs", name, clean_shape, shape(tensors[name])))
            elif dtypes and str(tensors[name].dtype).removeprefix("torch.") != dtype:
                found.append(Found(f"{what}: {name} is {tensors[name].dtype}, its clean structure {dtype}",
                                   "dtype_differs", name, dtype, str(tensors[name].dtype).removeprefix("torch.")))
    return found


def derive(family: Any) -> Structure:
    """The family's class's clean structure, built here: this process must never have entered zero.Init.

    Built on the CPU, as a user's build is: a meta-device build is not always the same model (transformers 5.0.0
    ties no weights on the meta device, so GPT-2's lm_head is a parameter of its own there and tied on the CPU).
    Where the CPU build raises, the meta device's answers."""
    import torch

    from .compat import build_from_config
    from .zoo import auto_class

    model_class, config = auto_class(family.auto_class), family.make_config()
    try:
        return structure_of(build_from_config(model_class, config), "cpu")
    except Exception as cpu_error:  # noqa: BLE001 - an init that cannot run here: the meta device answers
        try:
            with torch.device("meta"):
                return structure_of(build_from_config(model_class, family.make_config()),
                                    f"meta (the CPU build raised {exception_line(cpu_error)})")
        except Exception as meta_error:  # noqa: BLE001 - reported for every case that needs it
            raise NoStructure(f"{family.auto_class} of {family.label} builds neither on the CPU "
                              f"({exception_line(cpu_error)}) nor on the meta device ({exception_line(meta_error)}) "
                              f"in a fresh process") from None


def family_key(family: Any) -> str:
    """One family's class and config (what decides its structure), as the oracle's cache key."""
    return json.dumps(dataclasses.asdict(family), sort_keys=True, default=str)


class StructureOracle:
    """Derives clean structures in one separate process for the whole run, each class once (threads share it).
    `get` returns a Structure, or a NoStructure saying why there is none."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, Structure | NoStructure] = {}
        self._process: subprocess.Popen | None = None
        self.seconds = 0.0  # time spent waiting for structures: what this run's clean structures cost

    def get(self, family: Any) -> Structure | NoStructure:
        import time

        key = family_key(family)
        with self._lock:
            if key not in self._cache:
                started = time.monotonic()
                self._cache[key] = self._ask(key)
                self.seconds += time.monotonic() - started
            return self._cache[key]

    def _ask(self, key: str) -> Structure | NoStructure:
        for _attempt in range(2):  # a process that died (a crashing build) is started again once
            process = self._started()
            try:
                process.stdin.write(key + "\n")
                process.stdin.flush()
                line = _read_line(process, STRUCTURE_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                self.close()
                failure = exception_line(exc)
                continue
            if not line:
                failure = f"the structure process exited with status {self.close()}"
                continue
            try:
                answer = json.loads(line)
            except ValueError:
                failure = f"the structure process answered {line[:200]!r}"
                continue
            return Structure.from_dict(answer["structure"]) if "structure" in answer else NoStructure(answer["error"])
        return NoStructure(f"no clean structure could be derived: {failure}")

    def _started(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen([sys.executable, "-m", STRUCTURE_MODULE], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
        return self._process

    def close(self) -> int | None:
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        return process.wait()


def _read_line(process: subprocess.Popen, timeout_s: float) -> str:
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise TimeoutError(f"no structure within {timeout_s:.0f} s")
    return process.stdout.readline()


def serve() -> None:
    """The oracle's process: a family per line in, its structure (or why there is none) per line out."""
    from .zoo import Family

    answers, sys.stdout = sys.stdout, sys.stderr  # what a model's code prints must not break the protocol
    for line in sys.stdin:
        data = json.loads(line)
        family = Family(**{**data, "config_kwargs": tuple(tuple(pair) for pair in data["config_kwargs"])})
        try:
            answer: dict[str, Any] = {"structure": derive(family).to_dict()}
        except NoStructure as exc:
            answer = {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the family itself is unavailable: said for every case of it
            answer = {"error": f"{family.label}: {exception_line(exc)}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    serve()
