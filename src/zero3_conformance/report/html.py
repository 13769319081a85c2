"""report.html: one self-contained file (no network) — a heatmap of cells × clauses, a filter, and every
failure expandable to its message. Every string from a record is escaped: messages quote exceptions."""

from __future__ import annotations

from html import escape
from typing import Any

from ..cell import COMPLETE
from ..contract import clause_key
from ..results import BAD_STATUSES, PASS, XFAIL, XPASS

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: center; }
th.cell, td.cell { text-align: left; font-family: monospace; }
td.pass { background: #b7e4c7; } td.fail { background: #f4a3a3; } td.xfail { background: #ffe8a3; }
td.none { background: #f3f3f3; color: #999; } td.broken { background: #d0c4e8; }
details { margin: 0.3em 0; } summary { cursor: pointer; } pre { white-space: pre-wrap; background: #f7f7f7;
padding: 0.5em; } .hidden { display: none; }
"""

SCRIPT = """
function applyFilter() {
  const needle = document.getElementById('filter').value.toLowerCase();
  document.querySelectorAll('[data-filter]').forEach(el => {
    el.classList.toggle('hidden', needle && !el.dataset.filter.toLowerCase().includes(needle));
  });
}
"""


def _heat(statuses: dict[str, int], intermittent: int = 0) -> tuple[str, str]:
    """(css class, text) for one cell × clause square."""
    if not statuses:
        return "none", "—"
    bad = sum(statuses.get(s, 0) for s in BAD_STATUSES)
    good = statuses.get(PASS, 0) + statuses.get(XPASS, 0)
    flaky = f" ~{intermittent}" if intermittent else ""
    if bad:
        return "fail", f"✗ {bad} / ✓ {good}{flaky}"
    if statuses.get(XFAIL):
        return "xfail", f"✓ {good} xfail {statuses[XFAIL]}{flaky}"
    return "pass", f"✓ {good}"


def render_html(report: dict[str, Any], command: str) -> str:
    clauses = sorted({c for cell in report["cells"] for c in cell["clauses"]}, key=clause_key)
    rows = []
    for cell in report["cells"]:
        if cell["status"] != COMPLETE:
            squares = f'<td class="broken" colspan="{max(len(clauses), 1)}">{escape(cell["status"])}</td>'
        else:
            flaky = cell.get("intermittent", {})
            squares = "".join(f'<td class="{cls}">{escape(text)}</td>'
                              for cls, text in (_heat(cell["clauses"].get(c, {}), flaky.get(c, 0)) for c in clauses))
        rows.append(f'<tr data-filter="{escape(cell["name"])} {escape(" ".join(cell["failing"]))}">'
                    f'<td class="cell">{escape(cell["name"])}</td>{squares}</tr>')
    failures = []
    for f in report["failures"]:
        flaky = f"INTERMITTENT ({', '.join(f['outcomes'])}) " if f.get("intermittent") else ""
        label = f"{flaky}{f['status']} {f['case']} — {f['cell']} — likely fault: {f['likely_fault']}"
        note = f"<p>{escape(f['known_issue'])}</p>" if f.get("known_issue") else ""
        failures.append(f'<details data-filter="{escape(label)}"><summary>{escape(label)}</summary>{note}'
                        f'<pre>{escape(f["message"])}</pre></details>')
    known = [f'<li data-filter="{escape(e["entry"] + " " + " ".join(e["cells"]))}"><b>{escape(e["kind"])}</b> '
             f'{escape(e["entry"])}: {escape(e["reason"].splitlines()[0] if e["reason"] else "")} — '
             f'<a href="{escape(e["link"])}">{escape(e["link"])}</a> ({sum(e["cells"].values())} cases in '
             f'{len(e["cells"])} cells)</li>' for e in report.get("expected", [])]
    broken = [f'<details data-filter="{escape(c["name"])}"><summary>{escape(c["status"])} {escape(c["name"])}'
              f'</summary><pre>{escape(c["message"])}</pre></details>'
              for c in report["cells"] if c["status"] != COMPLETE]
    coverage = [f'<li data-filter="{escape(c["name"])}">{escape(c["name"])}: {a["types"]} model types attempted, '
                f'{a["built"]} built, {a["checked"]} checked, through {a["classes"]} classes</li>'
                for c in report["cells"] if (a := c.get("architectures"))]
    header = "".join(f"<th>{escape(c)}</th>" for c in clauses)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ZeRO-3 compatibility report</title>
<style>{STYLE}</style><script>{SCRIPT}</script></head><body>
<h1>ZeRO-3 compatibility report</h1>
<p>✗ did not hold, ✓ held, xfail a known finding, ~N intermittent cases (outcomes differed between tries).</p>
<p>Generated {escape(report["generated"])} by zero3-conformance {escape(report["harness"])};
{len(report["cells"])} cells. Regenerate with <code>{escape(command)}</code>.</p>
<p><label>Filter cells, clauses and failures: <input id="filter" oninput="applyFilter()"
placeholder="e.g. tf4.57 or G1"></label></p>
<table><thead><tr><th class="cell">cell</th>{header}</tr></thead><tbody>
{"".join(rows)}
</tbody></table>
<h2>Failures ({len(report["failures"])})</h2>
{"".join(failures) or "<p>None.</p>"}
{"<h2>Architectures</h2><ul>" + "".join(coverage) + "</ul>" if coverage else ""}
{"<h2>Known findings (XFAIL), by entry</h2><ul>" + "".join(known) + "</ul>" if known else ""}
{"<h2>Cells that did not run to the end</h2>" + "".join(broken) if broken else ""}
</body></html>
"""
