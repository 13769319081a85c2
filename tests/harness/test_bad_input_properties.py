"""Property-based: whatever a DeepSpeed config or a matrix file holds, reading it either succeeds or fails
with one UsageError line naming the problem — never another exception, never a traceback."""

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from zero3_conformance import cli
from zero3_conformance.dsconfig import read_config_source
from zero3_conformance.errors import UsageError
from zero3_conformance.matrix import parse

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), st.text(max_size=8))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                           max_leaves=12)


def _one_line(exc, naming=""):
    """`exc` is a UsageError of one line (that names `naming`)."""
    assert isinstance(exc, UsageError)
    assert str(exc)
    assert "\n" not in str(exc)
    assert naming in str(exc)


# Configs shaped like DeepSpeed's, with any value where a value goes, and sometimes a wrong shape.
ds_configs = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "zero_optimization": st.one_of(json_values, st.fixed_dictionaries({}, optional={
        "stage": json_values, "stage3_param_persistence_threshold": json_values, "offload_param": json_values})),
    "bf16": st.one_of(json_values, st.fixed_dictionaries({}, optional={"enabled": json_values})),
    "fp16": st.one_of(json_values, st.fixed_dictionaries({}, optional={"enabled": json_values})),
    "train_micro_batch_size_per_gpu": json_values,
}))


@SETTINGS
@given(ds_configs)
@example("\x00")  # a path with a NUL byte: open() raises ValueError, not OSError
def test_any_ds_config_is_accepted_or_one_usage_error(config):
    try:
        read_config_source(config)
    except Exception as exc:  # noqa: BLE001 - the property: nothing but a one-line UsageError
        _one_line(exc)


@SETTINGS
@given(st.binary(max_size=64))
def test_any_ds_config_file_is_accepted_or_one_usage_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("ds") / "ds.json"
    path.write_bytes(data)
    try:
        read_config_source(path)
    except Exception as exc:  # noqa: BLE001
        _one_line(exc)


VALID_CELL = {"torch": "2.13.0", "deepspeed": "0.19.8", "transformers": "5.24.0", "accelerate": "1.15.0"}
matrices = st.fixed_dictionaries({}, optional={
    "python": st.one_of(st.just("3.11"), json_values),
    "axes": st.one_of(json_values, st.fixed_dictionaries({lib: st.one_of(st.just([v]), json_values)
                                                          for lib, v in VALID_CELL.items()})),
    "exclude": st.one_of(json_values, st.lists(st.dictionaries(st.sampled_from([*VALID_CELL, "reason", "x"]),
                                                               json_values, max_size=3), max_size=2)),
    "profiles": st.one_of(json_values, st.dictionaries(st.text(min_size=1, max_size=5), st.one_of(
        json_values, st.fixed_dictionaries({}, optional={
            "cells": st.one_of(json_values, st.lists(st.one_of(st.just(VALID_CELL), json_values), max_size=2)),
            "all": json_values, "run_args": json_values})), max_size=2)),
})


@SETTINGS
@given(matrices)
def test_any_matrix_is_parsed_or_one_usage_error(data):
    try:
        parse(data, "matrix.toml")
    except Exception as exc:  # noqa: BLE001
        _one_line(exc, naming="matrix.toml")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=80), st.binary(max_size=40)))
def test_any_matrix_file_exits_0_or_2_with_one_line(tmp_path, capsys, content):
    path = tmp_path / "matrix.toml"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    code = cli.main(["matrix", "--file", str(path), "--list"])
    err = capsys.readouterr().err.strip()
    assert code in (0, 2)
    if code == 2:
        assert len(err.splitlines()) == 1, err
        assert "Traceback" not in err, err


def test_the_valid_shapes_the_strategies_build_on_are_read_as_given():
    assert read_config_source({"zero_optimization": {"stage": 3}}) == {"zero_optimization": {"stage": 3}}
    matrix = parse({"python": "3.11", "axes": {lib: [v] for lib, v in VALID_CELL.items()},
                    "profiles": {"smoke": {"cells": [VALID_CELL]}}})
    (cell,) = matrix.profile("smoke")
    assert {lib: getattr(cell, lib) for lib in VALID_CELL} == VALID_CELL


def test_a_toml_path_no_file_can_have_is_one_usage_error():
    from zero3_conformance.errors import read_toml_file

    with pytest.raises(UsageError, match="cannot read known-issues file '\\\\x00': embedded null byte"):
        read_toml_file("\x00", "known-issues file")
    with pytest.raises(UsageError, match="is not valid TOML"):  # still told apart from a path error
        read_toml_file(__file__, "known-issues file")
