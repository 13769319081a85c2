"""A matrix run keeps going past broken cells and records why they broke; the report aggregates run
directories, says where a fault likely lies, and diffs against an older report. tox is stood in for by a
small script that behaves per cell as told, so these tests run in a second."""

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from zero3_conformance import cli
from zero3_conformance.matrix import Cell
from zero3_conformance.matrix.runner import (
    COMPLETE,
    NOT_IMPORTABLE,
    NOT_INSTALLABLE,
    RUN_FAILED,
    SERVED,
    run_profile,
    served_elsewhere,
)
from zero3_conformance.report import write_report
from zero3_conformance.report.aggregate import BLAME_INTEGRATION, BLAME_STACK, load_cell
from zero3_conformance.report.summary import render as render_summary
from zero3_conformance.results import FAIL, PASS, XFAIL, XPASS, Record, RecordWriter
from zero3_conformance.rundir import RunDir

FAKE_TOX = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    args = sys.argv[1:]
    cell = args[args.index("-e") + 1]
    behaviour = json.loads(os.environ["FAKE_TOX"])[cell]
    if args[0] == "run" and "--notest" in args:
        if behaviour == "install":
            print("ERROR: resolution impossible: deepspeed==0.15.4 needs torch<2.6")
            sys.exit(1)
        sys.exit(0)
    if args[0] == "exec":
        if behaviour == "import":
            print("ImportError: cannot import name 'is_torch_greater_or_equal'")
            sys.exit(1)
        sys.exit(0)
    out = Path(os.environ["ZERO3_CONFORMANCE_MATRIX_OUT"]) / cell
    if behaviour == "served":  # the node of ranks 2-3 of a launched world of 2 nodes; rank 0's run found a FAIL
        from zero3_conformance.worlds.launched import Launch, note_served
        note_served(Launch("torch", 2, 4, 0, 2, "node0", 29500), out, 1)
        sys.exit(1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calls").write_text(str(int((out / "calls").read_text()) + 1 if (out / "calls").exists() else 1))
    (out / "results.jsonl").write_text("")
    if behaviour != "unfinished":  # as `run` does last: the plan records the run's end
        from zero3_conformance.rundir import RunDir
        RunDir(out).mark_finished(planned=0, recorded=0)
    sys.exit(0)
''')

CELLS = [Cell("2.13.0", "0.19.8", "5.24.0", "1.15.0"), Cell("2.13.0", "0.15.4", "4.46.3", "1.10.1"),
         Cell("2.14.1", "0.19.8", "4.57.6", "1.15.0")]


@pytest.fixture
def fake_tox(tmp_path, monkeypatch):
    script = tmp_path / "fake_tox.py"
    script.write_text(FAKE_TOX)
    monkeypatch.setenv("FAKE_TOX", json.dumps({CELLS[0].name: "ok", CELLS[1].name: "install",
                                               CELLS[2].name: "import"}))
    return [sys.executable, str(script)]


def test_broken_cells_are_recorded_not_dropped_and_resume_keeps_finished_ones(tmp_path, fake_tox):
    out = tmp_path / "runs"
    run_dirs = run_profile(CELLS, out, fake_tox, tmp_path, {})
    statuses = [json.loads((d / "cell.json").read_text())["status"] for d in run_dirs]
    assert statuses == [COMPLETE, NOT_INSTALLABLE, NOT_IMPORTABLE]
    assert "resolution impossible" in json.loads((run_dirs[1] / "cell.json").read_text())["message"]
    assert "ImportError" in json.loads((run_dirs[2] / "cell.json").read_text())["message"]
    run_profile(CELLS, out, fake_tox, tmp_path, {}, resume=True)
    assert (run_dirs[0] / "calls").read_text() == "1"  # the finished cell was not run again
    report = write_report(run_dirs, tmp_path / "report")
    assert [c["status"] for c in report["cells"]] == [COMPLETE, NOT_INSTALLABLE, NOT_IMPORTABLE]
    assert "NOT_INSTALLABLE" in (tmp_path / "report" / "report.md").read_text()


def test_a_cell_whose_run_exits_without_recording_its_end_did_not_finish(tmp_path, fake_tox, monkeypatch):
    monkeypatch.setenv("FAKE_TOX", json.dumps({CELLS[0].name: "unfinished"}))
    [run_dir] = run_profile(CELLS[:1], tmp_path / "runs", fake_tox, tmp_path, {})
    info = json.loads((run_dir / "cell.json").read_text())
    assert info["status"] == RUN_FAILED
    assert info["message"].startswith("PARTIAL: 0 recorded, completion not recorded")
    assert write_report([run_dir], tmp_path / "report")["cells"][0]["passed"] is False


def test_a_node_that_served_another_nodes_rank_0_is_no_cell_of_its_report(tmp_path, fake_tox, monkeypatch):
    monkeypatch.setenv("FAKE_TOX", json.dumps({CELLS[0].name: "ok", CELLS[1].name: "served"}))
    run_dirs = run_profile(CELLS[:2], tmp_path / "runs", fake_tox, tmp_path, {})
    served = served_elsewhere(run_dirs)
    assert list(served) == [run_dirs[1]]
    assert served[run_dirs[1]]["status"] == SERVED
    assert served[run_dirs[1]]["exit_status"] == 1
    assert served[run_dirs[1]]["message"] == "this node's ranks [2, 3] served rank 0 at node0:29500, whose node " \
                                             "holds the records"


def test_cells_can_run_several_at_once_and_come_back_in_matrix_order(tmp_path, fake_tox, capsys):
    seen = []
    run_dirs = run_profile(CELLS, tmp_path / "runs", fake_tox, tmp_path, {}, jobs=3,
                           progress=lambda index, total, cell, info: seen.append((index, cell.name, info["status"])))
    assert [d.name for d in run_dirs] == [c.name for c in CELLS]
    assert sorted(name for _, name, _ in seen) == sorted(c.name for c in CELLS)
    assert [index for index, _, _ in seen] == [1, 2, 3]
    assert cli.main(["matrix", "--jobs", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err


CELL = {"python": "3.11.7", "torch": "2.13.0", "deepspeed": "0.19.8", "transformers": "5.24.0",
        "accelerate": "1.15.0", "backend": "gloo", "device": "cpu", "harness": "0.1.0"}


def _record(clause, subject, status, message="", check="c", cell=CELL, outcomes=None):
    """A record as a run with the default repeats leaves it: three tries, each with this status."""
    return Record(clause=clause, check=check, subject=subject, model="llama", layout=None, world_size=2, dtype="fp32",
                  status=status, message=message, duration_s=0.1, cell=cell,
                  case_id=f"{clause}-{check}[{subject}-llama-ws2-fp32]",
                  outcomes=outcomes or [{XFAIL: FAIL, XPASS: PASS}.get(status, status)] * 3)


def _run_dir(path: Path, records) -> Path:
    with RecordWriter(path / "results.jsonl") as writer:
        for record in records:
            writer.write(record)
    RunDir(path).write_summary(render_summary(records, len(records)))
    RunDir(path).mark_finished(len(records), len(records))
    return path


def test_blame_diff_and_supported_ranges(tmp_path, capsys):
    old_cell = _run_dir(tmp_path / "old", [_record("G1", "transformers", PASS), _record("G1", "reference", PASS),
                                           _record("A4", "transformers", FAIL, "stage 7 accepted"),
                                           _record("A4", "reference", PASS)])
    assert cli.main(["report", str(old_cell), "--out", str(tmp_path / "r1")]) == 0
    new_cell = _run_dir(tmp_path / "new", [
        _record("G1", "transformers", FAIL, "model.embed_tokens.weight: 3 elements differ"),
        _record("G1", "reference", PASS),
        _record("N1", "transformers", FAIL, "logits differ"), _record("N1", "reference", FAIL, "logits differ"),
        _record("A4", "transformers", PASS), _record("A4", "reference", PASS)])
    assert cli.main(["report", str(new_cell), "--out", str(tmp_path / "r2"), "--compatibility",
                     str(tmp_path / "COMPATIBILITY.md"), "--baseline", str(tmp_path / "r1" / "report.json")]) == 0
    assert (tmp_path / "COMPATIBILITY.md").read_text() == (tmp_path / "r2" / "report.md").read_text()
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    blame = {(f["clause"], f["subject"]): f["likely_fault"] for f in report["failures"]}
    assert blame == {("G1", "transformers"): BLAME_INTEGRATION, ("N1", "transformers"): BLAME_STACK,
                     ("N1", "reference"): BLAME_STACK}
    diff = next(iter(report["diff"].values()))
    assert diff["newly_failing"] == ["G1/transformers", "N1/reference", "N1/transformers"]
    assert diff["newly_fixed"] == ["A4/transformers"]
    assert report["supported"]["transformers"] == {"5.24.0": "0/1 cells every clause held"}
    markdown = (tmp_path / "r2" / "report.md").read_text()
    assert "likely fault: transformers integration" in markdown
    assert "3 elements differ" in markdown
    assert "## Provenance" in markdown
    assert "zero3-conformance report" in markdown


def test_report_of_something_that_is_no_run_directory_exits_2(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_html_report_is_self_contained_and_escapes_what_records_say(tmp_path):
    hostile = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'
    run_dir = _run_dir(tmp_path / "cell", [_record("G1", "transformers", FAIL, hostile),
                                           _record("G1", "reference", PASS)])
    write_report([run_dir], tmp_path / "r")
    html = (tmp_path / "r" / "report.html").read_text()
    assert "<script>alert" not in html
    assert "<img src=x" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;img" in html
    assert "http://" not in html
    assert "https://" not in html
    assert 'class="fail"' in html
    assert "likely fault: transformers integration" in html


def _chromium():
    import shutil

    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


# In CI the browser must be there (.ci/run installs it): the test fails there rather than skip.
@pytest.mark.skipif(_chromium() is None and not os.environ.get("CI"),
                    reason="no headless Chromium on this machine (apt-get install chromium)")
def test_html_report_renders_in_a_headless_browser_and_its_filter_hides_what_does_not_match(tmp_path):
    import struct
    import subprocess

    assert _chromium(), "no Chromium on this CI machine: .ci/run installs Debian's chromium"
    run_dir = _run_dir(tmp_path / "cell", [_record("G1", "transformers", FAIL, "weights differ"),
                                           _record("G1", "reference", PASS)])
    write_report([run_dir], tmp_path / "r")
    page = (tmp_path / "r" / "report.html").as_uri()
    browser = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*browser, "--dump-dom", page], capture_output=True, text=True, timeout=60).stdout
    assert 'class="fail"' in dom
    assert "likely fault: transformers integration" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([*browser, "--window-size=1200,800", f"--screenshot={shot}", page], capture_output=True,
                   timeout=60)
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1200, 800)
    # Typing into the filter, as a reader does: the report in a frame of a page that types and reports back.
    (tmp_path / "r" / "typing.html").write_text(TYPING_PAGE)
    typed = subprocess.run([*browser, "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom",
                            (tmp_path / "r" / "typing.html").as_uri()], capture_output=True, text=True,
                           timeout=60).stdout
    out = typed.split('<pre id="out">', 1)[-1].split("</pre>", 1)[0]
    seen = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert seen.get("typed") == "likely fault", typed[-2000:]
    shown, hidden = seen["shown"].split("|"), seen["hidden"].split("|")
    assert any(shown), seen  # the filter kept something and hid something
    assert any(hidden), seen
    assert all("likely fault" in text.lower() for text in shown if text), seen
    assert all("likely fault" not in text.lower() for text in hidden if text), seen
    assert seen["cleared"] == "0 hidden", seen


# Types a needle into report.html's filter (its value set and the input event a keystroke fires), lists what
# stays shown and what is hidden, then clears it and counts what is still hidden.
TYPING_PAGE = """<!doctype html><html><body><pre id="out">pending</pre>
<iframe id="report" src="report.html" onload="
  const page = this.contentDocument, filter = page.getElementById('filter'), out = [];
  const type = text => { filter.value = text; filter.dispatchEvent(new Event('input', {bubbles: true})); };
  const items = () => [...page.querySelectorAll('[data-filter]')];
  const text = e => e.textContent.replace(/\\s+/g, ' ').trim();
  type('likely fault');
  out.push('typed ' + filter.value);
  out.push('shown ' + items().filter(e => !e.classList.contains('hidden')).map(text).join('|'));
  out.push('hidden ' + items().filter(e => e.classList.contains('hidden')).map(text).join('|'));
  type('');
  out.push('cleared ' + items().filter(e => e.classList.contains('hidden')).length + ' hidden');
  document.getElementById('out').textContent = out.join('\\n');
"></iframe></body></html>
"""


def test_report_shows_a_kill_matrix_and_rejects_a_file_that_is_not_one(tmp_path, capsys):
    import json

    from zero3_conformance.cli import main

    run_dir = tmp_path / "run"
    with RecordWriter(run_dir / "results.jsonl") as writer:
        writer.write(_record("G1", "reference", PASS))
    kill_matrix = {"clauses": ["G1"], "mutants": {"no_modifier_rank": {
        "doc": "Rank 0 copies without modifier_rank.", "declared": ["G1"], "clauses": {"G1": {"verdict": "killed"}}}}}
    (tmp_path / "km.json").write_text(json.dumps(kill_matrix))
    assert main(["report", str(run_dir), "--out", str(tmp_path / "r"), "--kill-matrix", str(tmp_path / "km.json")]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert "## Mutation testing: the kill matrix" in text
    assert "| `no_modifier_rank` | ✗ | G1 |" in text
    (tmp_path / "bad.json").write_text("[]")
    bad = ["--kill-matrix", str(tmp_path / "bad.json")]
    assert main(["report", str(run_dir), "--out", str(tmp_path / "r2"), *bad]) == 2
    assert "is not a kill matrix" in capsys.readouterr().err


def test_a_known_issue_that_passed_is_flagged_in_the_report(tmp_path):
    note = "known issue (https://github.com/x/y/issues/1): init garbage -- but it passed: the entry may be stale"
    records = [_record("G3", "transformers", XPASS, note), _record("G3", "reference", PASS)]
    run_dir = _run_dir(tmp_path / "cell", records)
    report = write_report([run_dir], tmp_path / "r")
    assert report["xpasses"] == [{"cell": report["cells"][0]["name"], "case": "G3-c[transformers-llama-ws2-fp32]",
                                  "message": note}]
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "## Known issues that passed (XPASS): check their entries" in markdown
    assert note in markdown
    assert "(XPASS 1)" in markdown


def test_a_launched_cell_and_a_started_one_of_the_same_versions_are_two_cells(tmp_path):
    """In a matrix's run directories (named by versions alone) as in plain ones, a launched world's shape
    is part of the cell's name."""
    launched = {**CELL, "nodes": 2, "ranks_per_node": 4}
    dirs = []
    for name, cell in (("started", CELL), ("launched", launched)):
        run_dir = _run_dir(tmp_path / name, [_record("P1", "reference", PASS, cell=cell)])
        (run_dir / "cell.json").write_text(json.dumps({"cell": "torch2.13.0-ds0.19.8-tf5.24.0-acc1.15.0",
                                                       "status": "COMPLETE"}))
        dirs.append(run_dir)
    names = [load_cell(d).name for d in dirs]
    assert names == ["torch2.13.0-ds0.19.8-tf5.24.0-acc1.15.0", "torch2.13.0-ds0.19.8-tf5.24.0-acc1.15.0-2x4ranks"]
    assert load_cell(_run_dir(tmp_path / "plain", [_record("P1", "reference", PASS, cell=launched)])).name.endswith(
        "-gloo-2x4ranks")


def test_the_report_says_which_clauses_a_profile_left_out_and_why(tmp_path, fake_tox):
    run_dirs = run_profile(CELLS[:1], tmp_path / "runs", fake_tox, tmp_path, {})
    write_report(run_dirs, tmp_path / "report", omitted={"default": {"P3": "minutes per cell"}, "smoke": {}})
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Clauses these cells did not run, and why\n\n- **P3** (profile `default`): minutes per cell\n" in text
    assert "profile `smoke`" not in text
