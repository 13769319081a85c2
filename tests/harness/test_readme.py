"""The README's set-up commands and option table stay true: CI runs the README's test command, and every
documented option exists."""

import re
from pathlib import Path

from zero3_conformance.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def setup_commands():
    section = README.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def test_two_setup_commands_main_job_then_tests():
    main_job, tests = setup_commands()
    assert "pip install -r matrix/default-env.txt" in main_job
    assert "zero3-conformance run --out" in main_job
    assert "pip install -r matrix/default-env.txt" in tests
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    readme_pytest = setup_commands()[1].split("&&")[-1].strip().split("/bin/python", 1)[1]  # " -m pytest ..."
    assert f'/bin/python"{readme_pytest}\n' in (ROOT / ".ci" / "run").read_text()


def test_documented_run_options_exist():
    run_parser = build_parser()._subparsers._group_actions[0].choices["run"]
    known = {opt for action in run_parser._actions for opt in action.option_strings}
    documented = set(re.findall(r"^\| `(--[a-z-]+)", README, flags=re.M))
    assert documented, documented - known
    assert documented <= known, documented - known


def test_every_bad_input_row_names_a_test_that_exists():
    section = README.split("### Bad input", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`(test_[a-z_]+\.py)::([A-Za-z0-9_:]+)`", section)
    assert len(named) >= 10
    for module, name in named:
        source = (ROOT / "tests" / "harness" / module).read_text()
        assert f"def {name.split('::')[-1]}(" in source, f"{module}::{name} named in the README does not exist"
        if "::" in name:
            assert f"class {name.split('::')[0]}" in source, f"{module}::{name}"
