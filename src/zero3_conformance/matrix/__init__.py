"""The version matrix (matrix/matrix.toml): axes, exclusions, extra packages some cells need, profiles of cells,
and the tox.ini made from them.

A cell pins one version of each library; its name says them, e.g. `torch2.13.0-ds0.19.8-tf5.24.0-acc1.15.0`,
and is its tox environment's name. Any problem in the file is a UsageError naming the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from ..cell import LIBRARIES
from ..errors import UsageError, read_toml_file

SHORT = {"torch": "torch", "deepspeed": "ds", "transformers": "tf", "accelerate": "acc"}
PROFILE_KEYS = {"cells", "all"}  # exactly one of them
PROFILE_OPTIONS = {"run_args", "omit"}  # options every cell's `zero3-conformance run` gets; clauses left out
# In a source checkout (the matrix is run from one: tox builds the project from it).
DEFAULT_FILE = Path(__file__).resolve().parents[3] / "matrix" / "matrix.toml"


@dataclasses.dataclass(frozen=True)
class Cell:
    torch: str
    deepspeed: str
    transformers: str
    accelerate: str

    @property
    def name(self) -> str:
        return "-".join(f"{SHORT[lib]}{getattr(self, lib)}" for lib in LIBRARIES)

    def pins(self) -> list[str]:
        return [f"{lib}=={getattr(self, lib)}" for lib in LIBRARIES]


@dataclasses.dataclass(frozen=True)
class Rule:
    """PEP 440 specifiers, one per library it names; a cell matches when every one of them holds."""
    specifiers: dict[str, str]  # library -> PEP 440 specifier set
    reason: str

    def matches(self, cell: Cell) -> bool:
        from packaging.specifiers import SpecifierSet

        return all(getattr(cell, lib) in SpecifierSet(spec) for lib, spec in self.specifiers.items())


class Exclusion(Rule):
    """Cells that cannot work: no profile may name one, and `all = true` leaves them out."""


@dataclasses.dataclass(frozen=True)
class ExtraPackages(Rule):
    """Requirements a matching cell installs beside its four pins (e.g. `numpy<2` for an old torch)."""
    packages: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Matrix:
    python: str
    axes: dict[str, list[str]]
    exclusions: list[Exclusion]
    profiles: dict[str, list[Cell]]
    run_args: dict[str, list[str]]  # per profile
    extra_packages: list[ExtraPackages] = dataclasses.field(default_factory=list)
    # Per profile, the clauses its run_args leave out, each with its reason (reports print them).
    omitted: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)

    def profile(self, name: str) -> list[Cell]:
        if name not in self.profiles:
            raise UsageError(f"unknown profile {name!r}; known: {', '.join(self.profiles)}")
        return self.profiles[name]

    def cells(self, profiles: str, names: Sequence[str] = ()) -> list[Cell]:
        """The cells of one profile or of several (`default,minimum`: each cell once, in that order), or
        only those named (each must be one of them)."""
        cells = list({c.name: c for name in profiles.split(",") for c in self.profile(name)}.values())
        if not names:
            return cells
        by_name = {c.name: c for c in cells}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise UsageError(f"cell {unknown[0]!r} is not in profile {profiles!r} "
                             f"(its cells: zero3-conformance matrix --profile {profiles} --list)")
        return [by_name[n] for n in names]

    def cell_run_args(self, profiles: str, cell: Cell) -> list[str]:
        """The `run` options of the first of these profiles that has the cell."""
        return next(self.run_args[name] for name in profiles.split(",") if cell in self.profile(name))

    def excluded(self, cell: Cell) -> Exclusion | None:
        return next((e for e in self.exclusions if e.matches(cell)), None)

    def extras(self, cell: Cell) -> list[str]:
        """What the cell installs beside its pins, by the `extra_packages` entries it matches."""
        return list(dict.fromkeys(p for rule in self.extra_packages if rule.matches(cell) for p in rule.packages))

    def requirements(self, cell: Cell) -> list[str]:
        return [*cell.pins(), *self.extras(cell)]


def _fail(where: str, problem: str) -> UsageError:
    return UsageError(f"invalid matrix file {where}: {problem}")


def _each_parsed(where: str, value: Any, parse: Callable[[str], Any], invalid: type, noun: str,
                 example: str) -> list[str]:
    """A non-empty list of strings, each one accepted by `parse`."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _fail(where, f"expected a non-empty list of {noun}s such as {example}")
    for item in value:
        try:
            parse(item)
        except invalid:
            raise _fail(where, f"{item!r} is not a {noun}") from None
    return list(value)


def _versions(where: str, value: Any) -> list[str]:
    from packaging.version import InvalidVersion, Version

    versions = _each_parsed(where, value, Version, InvalidVersion, "version", '"2.13.0"')
    if len(set(versions)) != len(versions):
        raise _fail(where, "a version is listed twice")
    return versions


def _rule(where: str, entry: Any, kind: type, what: str, fields: tuple[str, ...] = ()) -> Any:
    """An exclusion or extra-packages entry: specifiers per library, a reason, and the kind's own fields."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    if not isinstance(entry, dict) or not isinstance(entry.get("reason"), str) or not entry["reason"].strip():
        raise _fail(where, f"{what} is a table of specifiers with a non-empty 'reason'")
    specifiers = {k: v for k, v in entry.items() if k not in ("reason", *fields)}
    unknown = set(specifiers) - set(LIBRARIES)
    if unknown or not specifiers:
        raise _fail(where, f"{what}'s keys are specifiers among {', '.join(LIBRARIES)}, 'reason'"
                           f"{''.join(f', {f!r}' for f in fields)}; got {sorted(entry)}")
    for lib, spec in specifiers.items():
        try:
            SpecifierSet(spec)
        except (InvalidSpecifier, TypeError):
            raise _fail(f"{where}.{lib}", f"{spec!r} is not a PEP 440 specifier") from None
    return kind(specifiers, entry["reason"], **{f: _requirements(f"{where}.{f}", entry.get(f)) for f in fields})


def _requirements(where: str, value: Any) -> tuple[str, ...]:
    from packaging.requirements import InvalidRequirement, Requirement

    return tuple(_each_parsed(where, value, Requirement, InvalidRequirement, "requirement", '"numpy<2"'))


def _cell(where: str, entry: Any, axes: dict[str, list[str]]) -> Cell:
    if not isinstance(entry, dict) or set(entry) != set(LIBRARIES):
        got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise _fail(where, f"a cell names exactly {', '.join(LIBRARIES)}; got {got}")
    for lib in LIBRARIES:
        if entry[lib] not in axes[lib]:
            raise _fail(f"{where}.{lib}", f"{entry[lib]!r} is not in axes.{lib} {axes[lib]}")
    return Cell(**{lib: entry[lib] for lib in LIBRARIES})


def _product(axes: dict[str, list[str]]) -> list[Cell]:
    import itertools

    return [Cell(*combo) for combo in itertools.product(*(axes[lib] for lib in LIBRARIES))]


def parse(data: dict[str, Any], source: str = "matrix") -> Matrix:
    if not isinstance(data.get("python"), str):
        raise _fail(f"{source}: python", "expected a version string such as \"3.11\"")
    axes_data = data.get("axes")
    if not isinstance(axes_data, dict) or set(axes_data) != set(LIBRARIES):
        raise _fail(f"{source}: axes", f"expected exactly {', '.join(LIBRARIES)}")
    axes = {lib: _versions(f"{source}: axes.{lib}", axes_data[lib]) for lib in LIBRARIES}
    rules = {}
    for key, kind, what, fields in (("exclude", Exclusion, "an exclusion", ()),
                                    ("extra_packages", ExtraPackages, "an extra_packages entry", ("packages",))):
        entries = data.get(key, [])
        if not isinstance(entries, list):
            raise _fail(f"{source}: {key}", "expected a list of tables")
        rules[key] = [_rule(f"{source}: {key}[{i}]", e, kind, what, fields) for i, e in enumerate(entries)]
    matrix = Matrix(data["python"], axes, rules["exclude"], {}, {}, rules["extra_packages"])
    profiles = data.get("profiles")
    if not isinstance(profiles, dict) or not profiles:
        raise _fail(f"{source}: profiles", "expected at least one profile")
    for name, profile in profiles.items():
        where = f"{source}: profiles.{name}"
        if not isinstance(profile, dict) or set(profile) - PROFILE_KEYS - PROFILE_OPTIONS \
                or len(set(profile) & PROFILE_KEYS) != 1:
            raise _fail(where, "a profile has either 'cells' (a list) or 'all = true', and optionally 'run_args' "
                               "and 'omit'")
        run_args = profile.get("run_args", [])
        if not isinstance(run_args, list) or not all(isinstance(a, str) for a in run_args):
            raise _fail(f"{where}.run_args", "expected a list of strings")
        matrix.run_args[name] = list(run_args)
        omit = profile.get("omit", {})
        if not isinstance(omit, dict) or not all(isinstance(r, str) and r.strip() for r in omit.values()):
            raise _fail(f"{where}.omit", "expected a table of clause = \"why this profile leaves it out\"")
        matrix.omitted[name] = dict(omit)
        if "all" in profile:
            if profile["all"] is not True:
                raise _fail(f"{where}.all", "only 'all = true' is meaningful")
            cells = [c for c in _product(axes) if matrix.excluded(c) is None]
        else:
            if not isinstance(profile["cells"], list) or not profile["cells"]:
                raise _fail(f"{where}.cells", "expected a non-empty list of cells")
            cells = [_cell(f"{where}.cells[{i}]", e, axes) for i, e in enumerate(profile["cells"])]
            for i, cell in enumerate(cells):
                exclusion = matrix.excluded(cell)
                if exclusion is not None:
                    raise _fail(f"{where}.cells[{i}]", f"{cell.name} is excluded: {exclusion.reason}")
            if len({c.name for c in cells}) != len(cells):
                raise _fail(f"{where}.cells", "a cell is listed twice")
        matrix.profiles[name] = cells
    return matrix


def load(path: str | Path = DEFAULT_FILE) -> Matrix:
    return parse(read_toml_file(path, "matrix file"), str(path))


def render_tox(matrix: Matrix) -> str:
    """tox.ini: a cell's name is its factors (`torch2.13.0-ds0.19.8-...`), each factor pins one library, and
    each profile is a label listing its cells, so `tox -e CELL` and `tox -m PROFILE` both work."""
    factor_pins = [f"    {SHORT[lib]}{version}: {lib}=={version}" for lib in LIBRARIES for version in matrix.axes[lib]]
    extra_pins = [f"    {factors}: {package}" for rule in matrix.extra_packages
                  for factors in _matching_factors(matrix, rule) for package in rule.packages]
    return "\n".join([
        "# Generated from matrix/matrix.toml by `zero3-conformance matrix --write-tox`; edit that file instead.",
        "[tox]",
        "requires =",
        "    tox>=4",
        "    tox-uv>=1",
        f"env_list = {', '.join(c.name for c in next(iter(matrix.profiles.values())))}",
        "# tox >= 4.6x would write a `.venv` file pointing at a cell, where the README's `python3 -m venv .venv` goes.",
        "venv_redirect = false",
        "labels =",
        *(f"    {name} = {', '.join(c.name for c in cells)}" for name, cells in matrix.profiles.items()),
        "",
        "[testenv]",
        f"base_python = python{matrix.python}",
        "package = editable",
        "deps =",
        *factor_pins,
        *(["# extra_packages: a line per combination of the named libraries' versions that needs them"]
          if extra_pins else []),
        *extra_pins,
        "# uv reads its own settings: hand it pip's find-links, where a local torch build may live.",
        "# JIT-built ops (DeepSpeed's) get a directory per cell: torch <= 2.13 waits forever on the lock file",
        "# torch 2.14 leaves in a shared one.",
        "set_env =",
        "    UV_FIND_LINKS = {env:PIP_FIND_LINKS:}",
        "    TORCH_EXTENSIONS_DIR = {env:HOME}/.cache/torch_extensions/{env_name}",
        "pass_env =",
        "    HOME",
        "    PIP_*",
        "    ZERO3_CONFORMANCE_*",
        "    CUDA_VISIBLE_DEVICES",
        "    NCCL_*",
        "# ZERO3_CONFORMANCE_LAUNCH (e.g. `torchrun --standalone --nproc-per-node 4`) runs the cell in a world",
        "# that launcher starts instead of the worlds the harness starts.",
        "commands =",
        "    {env:ZERO3_CONFORMANCE_LAUNCH:python} -m zero3_conformance run "
        "--out {env:ZERO3_CONFORMANCE_MATRIX_OUT:{toxinidir}/runs/matrix}/{env_name} {posargs}",
    ]) + "\n"


def _matching_factors(matrix: Matrix, rule: Rule) -> list[str]:
    """Tox factor conditions (`torch2.2.0`, `torch2.2.0-ds0.14.1`: every factor present) naming, by the
    rule's own libraries only, the cells of the axes the rule matches."""
    libs = [lib for lib in LIBRARIES if lib in rule.specifiers]
    return list(dict.fromkeys("-".join(f"{SHORT[lib]}{getattr(cell, lib)}" for lib in libs)
                              for cell in _product(matrix.axes) if rule.matches(cell)))


def github_matrix(cells: Sequence[Cell], nodes: int = 1) -> dict[str, Any]:
    """A GitHub Actions `strategy.matrix`: one job per cell, with its name and each library's version; with
    `nodes`, one job per cell and node (`node` 0 to nodes - 1), a cell's jobs next to each other, for a world
    launched across that many machines."""
    return {"include": [{"cell": c.name, **dataclasses.asdict(c), **({"node": node} if nodes > 1 else {})}
                        for c in cells for node in range(nodes)]}
