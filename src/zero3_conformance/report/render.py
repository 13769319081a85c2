"""report.json, report.md and report.html from the aggregate, each written whole."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..cell import COMPLETE
from ..contract import clause_groups
from ..errors import UsageError
from ..known_issues import KnownIssue
from ..results import BAD_STATUSES, PASS, XFAIL, XPASS, write_whole
from .aggregate import aggregate, verdict
from .html import render_html
from .summary import CHECKED_WHEN_RAN

GROUPS = clause_groups()
MESSAGE_CHARS = 1500


def _group_cell(clauses: dict[str, dict[str, int]], group: str) -> str:
    counts: dict[str, int] = {}
    for clause, statuses in clauses.items():
        if clause.startswith(group):
            for status, n in statuses.items():
                counts[status] = counts.get(status, 0) + n
    if not counts:
        return "—"
    good = counts.get(PASS, 0) + counts.get(XPASS, 0)
    bad = sum(counts.get(s, 0) for s in BAD_STATUSES)
    text = f"✓ {good}" + (f" ✗ {bad}" if bad else "")
    text += f" (xfail {counts[XFAIL]})" if counts.get(XFAIL) else ""
    return text + (f" (XPASS {counts[XPASS]})" if counts.get(XPASS) else "")


def _triage_text(triage: dict[str, int]) -> str:
    parts = [f"{n} {what}" for what, n in triage.items() if n]
    return ", ".join(parts) or "—"


def render_markdown(report: dict[str, Any], command: str) -> str:
    lines = ["# ZeRO-3 compatibility report", ""]
    lines += ["| cell | status | " + " | ".join(GROUPS) + " | failures: known upstream, new finding, intermittent, "
              "unexpected |", "|---|---|" + "---|" * len(GROUPS) + "---|"]
    for cell in report["cells"]:
        lines.append(f"| `{cell['name']}` | {verdict(cell)} | "
                     + " | ".join(_group_cell(cell["clauses"], g) for g in GROUPS)
                     + f" | {_triage_text(cell.get('triage', {}))} |")
    lines += ["", "✓ the clause held (PASS, XPASS) ✗ it did not (FAIL, ERROR, TIMEOUT, CRASH, not expected by a known "
              "issue); xfail: a known finding, expected. *Intermittent*: a case whose outcomes differed between "
              "tries (it is tried again after any outcome but PASS or SKIP, the last time in a fresh world)."]
    if report.get("omitted"):
        lines += ["", "## Clauses these cells did not run, and why", ""]
        for profile, omitted in sorted(report["omitted"].items()):
            lines += [f"- **{clause}** (profile `{profile}`): {reason}" for clause, reason in omitted.items()]
    lines += ["", "## Supported versions (from these cells)", ""]
    for lib, versions in report["supported"].items():
        lines.append(f"- **{lib}**: " + "; ".join(f"{v}: {text}" for v, text in versions.items()))
    compared = [c for c in report["cells"] if c.get("values_compared", {}).get("attempted")]
    if compared:
        lines += ["", "## Classes whose loaded values were compared (G1)", ""]
        for cell in compared:
            counts = cell["values_compared"]
            lines.append(f"- `{cell['name']}`: {counts['attempted']} classes attempted; "
                         + (", ".join(f"{n} for {s}" for s, n in sorted(counts.items()) if s != "attempted")
                            or "none for any subject"))
    swept = [c for c in report["cells"] if c.get("architectures")]
    if swept:
        lines += ["", "## Architectures (model types checked through their classes)", "",
                  "| cell | types attempted | built | checked | classes | " + " | ".join(GROUPS[1:3]) + " |",
                  "|---|---|---|---|---|---|---|"]
        for cell in swept:
            cover = cell["architectures"]
            lines.append(f"| `{cell['name']}` | {cover['types']} | {cover['built']} | {cover['checked']} | "
                         f"{cover['classes']} | " + " | ".join(_group_cell(cover["clauses"], g) for g in GROUPS[1:3])
                         + " |")
        lines += ["", f"Checked: {', '.join(CHECKED_WHEN_RAN)} ran (not SKIP) for every subject; each cell's "
                  "the run's summary names the types that were not."]
    broken = [c for c in report["cells"] if c["status"] != COMPLETE]
    if broken:
        lines += ["", "## Cells that did not run to the end", ""]
        for cell in broken:
            lines += [f"### {cell['status']} `{cell['name']}`", "", "```", cell["message"][-MESSAGE_CHARS:], "```", ""]
    if report.get("diff"):
        lines += ["", "## Changes against the baseline report", ""]
        for name, change in report["diff"].items():
            lines.append(f"- `{name}`: newly failing {', '.join(change['newly_failing']) or 'none'}; "
                         f"newly fixed {', '.join(change['newly_fixed']) or 'none'}"
                         + (" (new cell)" if "new_cell" in change else ""))
    steady = [f for f in report["failures"] if not f.get("intermittent")]
    flaky = [f for f in report["failures"] if f.get("intermittent")]
    for title, failures, prefix in (("Failures (the same on every try)", steady, ""),
                                    ("Intermittent failures (outcomes differ between tries)", flaky, "INTERMITTENT ")):
        if failures:
            lines += ["", f"## {title}", ""]
        for failure in failures:
            outcomes = f" ({', '.join(failure['outcomes'])})" if len(failure.get("outcomes", [])) > 1 else ""
            lines += [f"### {prefix}{failure['status']}{outcomes} {failure['case']} — likely fault: "
                      f"{failure['likely_fault']}", f"cell `{failure['cell']}`"]
            lines += ["", failure["known_issue"]] if failure.get("known_issue") else []
            lines += ["", "```", failure["message"][:MESSAGE_CHARS], "```", ""]
    lines += _known_findings(report)
    if report.get("xpasses"):
        lines += ["", "## Known issues that passed (XPASS): check their entries", ""]
        for xpass in report["xpasses"]:
            first_line = (xpass["message"] or "").split("\n")[0]
            lines += [f"- `{xpass['case']}` in `{xpass['cell']}`: {first_line}"]
    if report.get("kill_matrix"):
        from .kill_matrix import render as render_kill_matrix

        lines += ["", render_kill_matrix(report["kill_matrix"]).replace("\n# ", "\n## ").replace("# ", "## ", 1)
                  .replace("\n## The mutants", "\n### The mutants").rstrip()]
    devices = sorted({str(c["versions"].get("device", "?")) for c in report["cells"]})
    lines += ["", "## Provenance", "",
              f"- generated {report['generated']} by zero3-conformance {report['harness']} "
              f"on {platform.node() or 'an unnamed host'}",
              f"- devices: {', '.join(devices)}",
              f"- cells: {len(report['cells'])}; exact versions in each cell's name and in report.json",
              f"- regenerate with: `{command}`"]
    return "\n".join(lines) + "\n"


def _known_findings(report: dict[str, Any]) -> list[str]:
    """The known issues the cells met (XFAIL), one line per entry with its cells; then entries possibly stale."""
    lines = []
    met = report.get("expected", [])
    if met:
        lines += ["", "## Known findings (XFAIL), by entry", ""]
        for entry in met:
            cells = ", ".join(f"`{name}` ({n})" for name, n in entry["cells"].items())
            lines += [f"- **{entry['kind']}** {entry['entry']}: {entry['reason'].splitlines()[0]} — {entry['link']} "
                      f"(expected {' or '.join(entry['expected'])}; {sum(entry['cells'].values())} cases"
                      f"{', ' + str(entry['intermittent']) + ' intermittent' if entry['intermittent'] else ''}): "
                      f"{cells}"]
    stale = [(cell["name"], entry) for cell in report["cells"] for entry in cell.get("stale", [])]
    if stale:
        lines += ["", "## Known issues possibly stale", "",
                  "Each applies to cases that ran in the cell, and none of them met it: the versions may have moved "
                  "past the finding.", ""]
        lines += [f"- `{name}`: {entry['entry']} (expected {' or '.join(entry['expected'])}; {entry['link']})"
                  for name, entry in stale]
    return lines


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {what} {path}: {exc}") from None


def write_report(run_dirs: list[Path], out: Path, baseline: Path | None = None, command: str = "",
                 kill_matrix: Path | None = None, issues: Sequence[KnownIssue] | None = None,
                 omitted: dict[str, dict[str, str]] | None = None) -> dict:
    """With `issues`, every record is triaged afresh against them (the runs are not run again); `omitted`: per
    matrix profile, the clauses it leaves out and why."""
    old = _read_json(baseline, "baseline report") if baseline is not None else None
    report = aggregate(run_dirs, old, issues)
    report["omitted"] = {profile: clauses for profile, clauses in (omitted or {}).items() if clauses}
    if kill_matrix is not None:
        report["kill_matrix"] = _read_json(kill_matrix, "kill matrix")
        if not isinstance(report["kill_matrix"], dict) or "mutants" not in report["kill_matrix"]:
            raise UsageError(f"{kill_matrix} is not a kill matrix (zero3-conformance mutate writes one)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (("report.json", json.dumps(report, indent=2, sort_keys=True) + "\n"),
                           ("report.md", render_markdown(report, command)),
                           ("report.html", render_html(report, command))):
            write_whole(out / name, text)
    except OSError as exc:
        raise UsageError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    return report
