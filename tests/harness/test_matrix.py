"""The version matrix: the shipped file is valid and spans what it must, tox.ini cannot drift from it, and a
broken matrix file is one line naming the field, exit 2."""

from pathlib import Path

import pytest
from packaging.version import Version

from zero3_conformance import cli
from zero3_conformance.matrix import LIBRARIES, load, parse, render_tox

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "matrix" / "matrix.toml"


def test_tox_ini_is_generated_from_the_matrix():
    assert (ROOT / "tox.ini").read_text() == render_tox(load(MATRIX)), \
        "tox.ini drifted from matrix/matrix.toml: run `zero3-conformance matrix --write-tox tox.ini`"


def test_tox_leaves_the_readmes_venv_path_alone():
    # tox >= 4.6x writes a `.venv` file pointing at a tox env unless told not to; the README creates its
    # virtual environment at .venv, which would then fail ("Unable to create directory").
    assert "\nvenv_redirect = false\n" in render_tox(load(MATRIX))


def test_default_profile_spans_the_versions_it_must():
    cells = load(MATRIX).profile("default")
    versions = {lib: {Version(getattr(c, lib)) for c in cells} for lib in LIBRARIES}
    assert len(cells) >= 12
    assert {Version(v) for v in ("2.12.1", "2.13.0", "2.14.1")} <= versions["torch"]
    minor_lines = {(v.major, v.minor) for v in versions["deepspeed"]}
    assert len(minor_lines) >= 4
    assert min(minor_lines) <= (0, 15)
    assert Version("0.19.8") in versions["deepspeed"]
    fours = sorted(v for v in versions["transformers"] if v.major == 4)
    fives = [v for v in versions["transformers"] if v.major == 5]
    assert len(fours) >= 3
    assert fours[0] <= Version("4.46.99")
    assert fours[-1] == Version("4.57.6")
    assert len(fives) >= 3
    assert len(versions["accelerate"]) >= 2
    newest = {lib: max(versions[lib]) for lib in LIBRARIES}
    assert any(any(Version(getattr(c, lib)) != newest[lib] for lib in LIBRARIES) for c in cells)


def test_the_default_profiles_first_cell_is_the_newest_release_on_every_axis():
    """A release added to an axis is checked by the profile a pull request's matrix runs first."""
    matrix = load(MATRIX)
    first = matrix.profile("default")[0]
    for lib in LIBRARIES:
        assert getattr(first, lib) == max(matrix.axes[lib], key=Version), lib


# Profiles that run a chosen subset on purpose: what a pull request gets, and the node-aware variants.
SUBSET_PROFILES = {"smoke", "nodes"}


def _selected(run_args, catalog):
    """The clauses a profile's `run` options select: `--clauses` where given, else every clause."""
    if "--clauses" not in run_args:
        return set(catalog)
    return set(run_args[run_args.index("--clauses") + 1].split(","))


def test_every_clause_runs_in_every_full_profile_or_is_omitted_with_its_reason():
    """A clause cannot be added without running in the matrix: each full profile selects every clause of the
    catalog, or names it under `omit` with why (reports print the reason)."""
    from zero3_conformance.checks.registry import load_checks

    catalog = {check.clause for check in load_checks().values()}
    matrix = load(MATRIX)
    for name in set(matrix.profiles) - SUBSET_PROFILES:
        selected, omitted = _selected(matrix.run_args[name], catalog), set(matrix.omitted[name])
        assert selected <= catalog, f"profile {name} selects unknown clauses {sorted(selected - catalog)}"
        assert not selected & omitted, f"profile {name} both runs and omits {sorted(selected & omitted)}"
        assert catalog - selected - omitted == set(), \
            f"profile {name} neither runs nor omits (with a reason) {sorted(catalog - selected - omitted)}"
        assert omitted <= catalog, f"profile {name} omits unknown clauses {sorted(omitted - catalog)}"


def test_every_profile_named_by_the_issue_exists_and_smoke_is_one_cell():
    matrix = load(MATRIX)
    assert {"smoke", "default", "full", "gpu"} <= set(matrix.profiles)
    assert len(matrix.profile("smoke")) == 1


VALID = {
    "python": "3.11",
    "axes": {"torch": ["2.13.0"], "deepspeed": ["0.19.8"], "transformers": ["5.24.0"], "accelerate": ["1.15.0"]},
    "profiles": {"smoke": {"cells": [{"torch": "2.13.0", "deepspeed": "0.19.8", "transformers": "5.24.0",
                                      "accelerate": "1.15.0"}]}},
}


def test_full_profile_leaves_out_exclusions():
    data = {**VALID, "axes": {**VALID["axes"], "deepspeed": ["0.15.4", "0.19.8"]},
            "exclude": [{"deepspeed": "<0.16", "reason": "needs a GPU"}], "profiles": {"full": {"all": True}}}
    assert [c.deepspeed for c in parse(data).profile("full")] == ["0.19.8"]


@pytest.mark.parametrize(("text", "names"), [
    ("python = 3.11", "python"),
    ('python = "3.11"\n[axes]\ntorch = ["2.13.0"]', "axes"),
    ('python = "3.11"\n[axes]\ntorch = ["two"]\ndeepspeed = ["0.19.8"]\ntransformers = ["5.24.0"]\n'
     'accelerate = ["1.15.0"]\n[profiles.x]\nall = true', "axes.torch"),
    ('python = "3.11"\n[axes]\ntorch = ["2.13.0"]\ndeepspeed = ["0.19.8"]\ntransformers = ["5.24.0"]\n'
     'accelerate = ["1.15.0"]\n[profiles.x]\ncells = [{torch = "9.9", deepspeed = "0.19.8", '
     'transformers = "5.24.0", accelerate = "1.15.0"}]', "profiles.x.cells[0].torch"),
    ('python = "3.11"\n[axes]\ntorch = ["2.13.0"]\ndeepspeed = ["0.19.8"]\ntransformers = ["5.24.0"]\n'
     'accelerate = ["1.15.0"]\n[profiles.x]\ncells = [{torch = "2.13.0"}]', "profiles.x.cells[0]"),
    ('python = "3.11"\nexclude = [{torch = "~~", reason = "r"}]\n[axes]\ntorch = ["2.13.0"]\n'
     'deepspeed = ["0.19.8"]\ntransformers = ["5.24.0"]\naccelerate = ["1.15.0"]\n[profiles.x]\nall = true',
     "exclude[0].torch"),
    ('python = "3.11"\n[axes]\ntorch = ["2.13.0"]\ndeepspeed = ["0.19.8"]\ntransformers = ["5.24.0"]\n'
     'accelerate = ["1.15.0"]\n[profiles.x]\nall = true\nomit = { P3 = "" }', "profiles.x.omit"),
    ("python = [unclosed", "line 1"),
])
def test_invalid_matrix_file_is_one_line_naming_the_field_and_exit_2(tmp_path, capsys, text, names):
    bad = tmp_path / "matrix.toml"
    bad.write_text(text)
    assert cli.main(["matrix", "--file", str(bad), "--list"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "matrix" in err, err
    assert names in err, err


def test_unknown_profile_and_missing_file_exit_2(tmp_path, capsys):
    assert cli.main(["matrix", "--file", str(MATRIX), "--profile", "nightly", "--list"]) == 2
    assert "unknown profile 'nightly'" in capsys.readouterr().err
    assert cli.main(["matrix", "--file", str(tmp_path / "none.toml"), "--list"]) == 2
    assert "cannot read matrix file" in capsys.readouterr().err


def test_a_profile_may_carry_options_for_every_cell_run():
    data = {**VALID, "profiles": {"quick": {**VALID["profiles"]["smoke"], "run_args": ["--world-sizes", "1,2"]}}}
    assert parse(data).run_args["quick"] == ["--world-sizes", "1,2"]
    with pytest.raises(Exception, match=r"profiles\.quick\.run_args"):
        parse({**data, "profiles": {"quick": {**VALID["profiles"]["smoke"], "run_args": "--world-sizes 1"}}})


def _declared_lower_bounds() -> dict[str, Version]:
    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bounds = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        if requirement.name in LIBRARIES:
            (lower,) = [s.version for s in requirement.specifier if s.operator == ">="]
            bounds[requirement.name] = Version(lower)
    return bounds


def test_declared_lower_bounds_are_the_oldest_versions_a_profile_runs():
    matrix = load(MATRIX)
    tested = {lib: {Version(getattr(c, lib)) for name, cells in matrix.profiles.items() if name != "full"
                    for c in cells} for lib in LIBRARIES}
    assert _declared_lower_bounds() == {lib: min(tested[lib]) for lib in LIBRARIES}
    assert {lib: min(map(Version, matrix.axes[lib])) for lib in LIBRARIES} == _declared_lower_bounds()


def test_minimum_profile_has_every_library_at_its_oldest_together_and_alone():
    matrix = load(MATRIX)
    oldest = {lib: min(matrix.axes[lib], key=Version) for lib in LIBRARIES}
    cells = matrix.profile("minimum")
    assert any(all(getattr(c, lib) == oldest[lib] for lib in LIBRARIES) for c in cells)
    for lib in LIBRARIES:  # and once beside something newer than the oldest of the others
        assert any(getattr(c, lib) == oldest[lib] and any(getattr(c, other) != oldest[other]
                                                          for other in LIBRARIES if other != lib) for c in cells)


def test_extra_packages_reach_matching_cells_and_tox():
    data = {**VALID, "axes": {**VALID["axes"], "torch": ["2.0.0", "2.13.0"], "deepspeed": ["0.14.1", "0.19.8"]},
            "extra_packages": [{"torch": "<2.3", "packages": ["numpy<2"], "reason": "built against numpy 1"},
                               {"torch": "<2.3", "deepspeed": "<0.15", "packages": ["six"], "reason": "r"}],
            "profiles": {"all": {"all": True}}}
    matrix = parse(data)
    by_name = {c.name: c for c in matrix.profile("all")}
    assert matrix.extras(by_name["torch2.0.0-ds0.14.1-tf5.24.0-acc1.15.0"]) == ["numpy<2", "six"]
    assert matrix.extras(by_name["torch2.0.0-ds0.19.8-tf5.24.0-acc1.15.0"]) == ["numpy<2"]
    assert matrix.extras(by_name["torch2.13.0-ds0.14.1-tf5.24.0-acc1.15.0"]) == []
    tox = render_tox(matrix)
    assert "\n    torch2.0.0: numpy<2\n" in tox
    assert "\n    torch2.0.0-ds0.14.1: six\n" in tox
    assert "torch2.13.0: numpy" not in tox
    for bad, field in (({"torch": "<2.3", "reason": "r"}, "packages"),
                       ({"torch": "<2.3", "packages": ["numpy <<2"], "reason": "r"}, "packages"),
                       ({"torch": "<2.3", "packages": ["numpy<2"]}, r"extra_packages\[0\]")):
        with pytest.raises(Exception, match=field):
            parse({**data, "extra_packages": [bad]})


def test_several_profiles_at_once_each_cell_once_with_its_own_profiles_options():
    other = {"torch": "2.13.0", "deepspeed": "0.19.8", "transformers": "5.24.0", "accelerate": "1.15.0"}
    data = {**VALID, "profiles": {"a": {"cells": [other], "run_args": ["--models", "gpt2"]},
                                  "b": {"cells": [other], "run_args": ["--models", "llama"]}}}
    matrix = parse(data)
    (cell,) = matrix.cells("b,a")
    assert matrix.cell_run_args("b,a", cell) == ["--models", "llama"]
    with pytest.raises(Exception, match="unknown profile 'c'"):
        matrix.cells("a,c")
