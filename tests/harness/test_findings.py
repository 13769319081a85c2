"""`findings`: each new finding of the known-issues file in a folder of its own, from the runs that saw it."""

import shutil
from pathlib import Path

import pytest

from zero3_conformance import cli, known_issues
from zero3_conformance.catalog import build_cases
from zero3_conformance.errors import UsageError
from zero3_conformance.repro import findings

from .test_repro import _run_dir

SEEN = "init-reads-partitioned-shape"  # a new finding of the shipped file, seen here on marian's G1
EVIDENCE = "transformers raised during from_pretrained(safetensors): ValueError: not enough values to unpack " \
           "(expected 2, got 1)"


def _marian_run(tmp_path):
    spec = next(c for c in build_cases(subjects=["transformers", "reference"], clauses=["G1"], world_sizes=[2],
                                       architectures=["marian"]) if c.subject == "transformers")
    return spec, _run_dir(tmp_path, [spec], status="FAIL", message=f"[{spec.id} on gloo, world size 2] rank 0,1: "
                                                                    f"{EVIDENCE}")


def test_a_seen_finding_gets_its_cases_and_keeps_its_own_reproducer(tmp_path):
    spec, run_dir = _marian_run(tmp_path)
    out = tmp_path / "findings"
    (out / "stale-finding").mkdir(parents=True)
    (out / "stale-finding" / "README.md").write_text("written by an earlier call")
    (out / "notes").mkdir()  # not written by the command: left alone
    (out / SEEN).mkdir()
    (out / SEEN / "repro.py").write_text("print('FINDING ABSENT')\n" * 3)  # written by hand: kept
    (out / SEEN / "report.md").write_text("# the bug report\n")  # written by hand: kept
    (out / SEEN / "notes.txt").write_text("an earlier call's")  # the command's: regenerated, here removed
    written = {w.short_name: w for w in findings.write_all([run_dir], out, known_issues.load())}
    new = {i.short_name for i in known_issues.load() if not i.upstream}
    assert set(written) == new
    assert written[SEEN].sightings == 1
    assert written[SEEN].reproducer == "repro.py, 3 lines"
    assert written[SEEN].report
    assert written[SEEN].disposition == "file"
    readme = (out / SEEN / "README.md").read_text()
    for expected in (f"`{spec.id}` | FAIL", "transformers 5.24.0, deepspeed 0.19.8, torch 2.13.0; gloo, world size 2",
                     "**observed value:**", "- **at fault:** transformers 5.25.0: modeling_utils.py: ",
                     "- **disposition:** file: to be filed upstream",
                     "- **report:** [report.md](report.md), to file at https://github.com/huggingface/transformers/issues",
                     "`repro.py`, 3 lines", "prints one last line, `FINDING REPRODUCED: …`"):
        assert expected in readme, expected
    assert (out / SEEN / "repro.py").read_text().count("FINDING ABSENT") == 3
    assert (out / SEEN / "report.md").read_text() == "# the bug report\n"
    assert not (out / SEEN / "notes.txt").exists()
    assert all(written[name].sightings == 0 for name in new - {SEEN})
    assert "Not seen in the runs" in (out / "adamw-steps-parameters-without-gradient" / "README.md").read_text()
    assert "None written yet." in (out / "adamw-steps-parameters-without-gradient" / "README.md").read_text()
    assert not (out / "stale-finding").exists()
    assert (out / "notes").is_dir()
    assert f"| [{SEEN}]({SEEN}/README.md) | file | 1 | repro.py, 3 lines | [report.md]({SEEN}/report.md) |" in \
        (out / "README.md").read_text()
    divergence = (out / "adamw-steps-parameters-without-gradient" / "README.md").read_text()
    assert "- **disposition:** divergence: a documented divergence from the contract, not a bug to file; by design" \
        in divergence


def test_a_case_that_passed_or_a_known_upstream_entry_makes_no_finding(tmp_path):
    spec, _ = _marian_run(tmp_path)
    passed = _run_dir(tmp_path / "passed", [spec])
    written = {w.short_name: w for w in findings.write_all([passed], tmp_path / "out", known_issues.load())}
    assert written[SEEN].sightings == 0


def test_a_short_name_is_required_of_a_new_finding_and_shaped_for_a_folder(tmp_path):
    entry = """[[issue]]
clause = "G1"
subject = "transformers"
upstream = false
reason = "r"
link = "https://github.com/huggingface/transformers/issues"
tensor = "t"
expected_value = "e"
observed_value = "o"
seen_in = "s"
not_seen_in = "n"
at_fault = "transformers 5.24.0: modeling_utils.py: f"
disposition = "file"
"""
    path = tmp_path / "issues.toml"
    path.write_text(entry)
    with pytest.raises(UsageError, match="field 'short_name' is required"):
        known_issues.load(path)
    path.write_text(entry + 'short_name = "Not A Folder"\n')
    with pytest.raises(UsageError, match="must be lower-case words joined by '-'"):
        known_issues.load(path)


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["findings", "--from", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zero3-conformance: error:")
    assert "is not a run directory" in err
    assert "\n" not in err


FINDINGS = Path(__file__).resolve().parents[2] / "findings"
MOST_LINES = 3000  # findings/ is for reading: reproducers, reports and where each finding was seen


def test_findings_regenerates_from_its_archive_byte_for_byte(tmp_path, capsys):
    copy = tmp_path / "findings"
    shutil.copytree(FINDINGS, copy)
    for readme in copy.rglob(findings.README):  # what the command writes: gone, then written again
        readme.unlink()
    assert cli.main(["findings", "--archive", str(copy / findings.ARCHIVE), "--out", str(copy)]) == 0
    shipped = {p.relative_to(FINDINGS): p.read_bytes() for p in FINDINGS.rglob("*") if p.is_file()}
    made = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert sorted(made) == sorted(shipped)
    assert [str(path) for path in shipped if made[path] != shipped[path]] == []
    assert f"zero3-conformance findings --archive findings/{findings.ARCHIVE} --out findings" in \
        (FINDINGS / findings.README).read_text()


def test_findings_is_short_enough_to_read():
    texts = [p for p in FINDINGS.rglob("*") if p.is_file() and p.suffix in (".md", ".py")]
    assert sum(len(p.read_text(encoding="utf-8").splitlines()) for p in texts) <= MOST_LINES
    assert (FINDINGS / findings.ARCHIVE).stat().st_size <= 5 * 1024 * 1024
    assert {p.suffix for p in FINDINGS.rglob("*") if p.is_file()} <= {".md", ".py", ".xz"}


def test_an_archive_keeps_records_and_plans_and_reads_back(tmp_path):
    _spec, run_dir = _marian_run(tmp_path)
    (run_dir / "summary.md").write_text("not kept")
    archive = tmp_path / "runs.tar.xz"
    findings.write_archive([run_dir], archive)
    with findings.archived_runs(archive) as unpacked:
        assert [d.name for d in unpacked] == [run_dir.name]
        assert sorted(p.name for p in unpacked[0].iterdir()) == sorted(
            p.name for p in run_dir.iterdir() if p.name != "summary.md")
        written = {w.short_name: w for w in findings.write_all(unpacked, tmp_path / "out", known_issues.load(),
                                                               archive=archive)}
    assert written[SEEN].sightings == 1


@pytest.mark.parametrize("argv", [["--archive", "{tmp}/missing.tar.xz"], ["--archive", "{tmp}/not-a-tar.tar.xz"],
                                  ["--archive", "{tmp}/not-a-tar.tar.xz", "--save-archive", "{tmp}/x.tar.xz"]])
def test_a_bad_archive_is_one_line_and_exit_2(tmp_path, capsys, argv):
    (tmp_path / "not-a-tar.tar.xz").write_text("plain text")
    args = [a.format(tmp=tmp_path) for a in argv]
    assert cli.main(["findings", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zero3-conformance: error:")
    assert "\n" not in err
