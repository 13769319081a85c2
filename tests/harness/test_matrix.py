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
    assert len(minor_lines) >= 4 and min(minor_lines) <= (0, 15) and Version("0.19.8") in versions["deepspeed"]
    fours = sorted(v for v in versions["transformers"] if v.major == 4)
    fives = [v for v in versions["transformers"] if v.major == 5]
    assert len(fours) >= 3 and fours[0] <= Version("4.46.99") and fours[-1] == Version("4.57.6")
    assert len(fives) >= 3
    assert len(versions["accelerate"]) >= 2
    newest = {lib: max(versions[lib]) for lib in LIBRARIES}
    assert any(any(Version(getattr(c, lib)) != newest[lib] for lib in LIBRARIES) for c in cells)


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


@pytest.mark.parametrize("text, names", [
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
    ("python = [unclosed", "line 1"),
])
def test_invalid_matrix_file_is_one_line_naming_the_field_and_exit_2(tmp_path, capsys, text, names):
    bad = tmp_path / "matrix.toml"
    bad.write_text(text)
    assert cli.main(["matrix", "--file", str(bad), "--list"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "matrix" in err and names in err, err


def test_unknown_profile_and_missing_file_exit_2(tmp_path, capsys):
    assert cli.main(["matrix", "--file", str(MATRIX), "--profile", "nightly", "--list"]) == 2
    assert "unknown profile 'nightly'" in capsys.readouterr().err
    assert cli.main(["matrix", "--file", str(tmp_path / "none.toml"), "--list"]) == 2
    assert "cannot read matrix file" in capsys.readouterr().err


def test_a_profile_may_carry_options_for_every_cell_run():
    data = {**VALID, "profiles": {"quick": {**VALID["profiles"]["smoke"], "run_args": ["--world-sizes", "1,2"]}}}
    assert parse(data).run_args["quick"] == ["--world-sizes", "1,2"]
    with pytest.raises(Exception, match="profiles.quick.run_args"):
        parse({**data, "profiles": {"quick": {**VALID["profiles"]["smoke"], "run_args": "--world-sizes 1"}}})
