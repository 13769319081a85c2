"""A run's summary: clauses x subjects, then every non-passing result with its message."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from ..cell import cell_label
from ..contract import clause_key
from ..known_issues import note
from ..results import BAD_STATUSES, SKIP, STATUSES, XFAIL, XPASS, Record, run_succeeded


def render(records: list[Record], planned: int, notes: list[str] = ()) -> str:
    cell = records[0].cell if records else {}
    complete = len(records) >= planned
    lines = ["# ZeRO-3 conformance summary", ""]
    if cell:
        lines += [f"Cell: `{cell_label(cell)}` on {cell.get('device')}, harness {cell.get('harness')}", ""]
    counts = Counter(r.status for r in records)
    verdict = "PASSED" if run_succeeded(records) else "FAILED"
    lines += [f"**{verdict}** — {len(records)} of {planned} planned results"
              + ("" if complete else " (PARTIAL: the run did not finish)") + ": "
              + ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])
              + (f"; {sum(r.intermittent for r in records)} intermittent" if any(r.intermittent for r in records)
                 else ""), ""]
    subjects = sorted({r.subject for r in records})
    # A row per clause; per clause and ZeRO-3 configuration variant where the run checked more than one.
    by_variant = len({r.variant for r in records}) > 1
    table: dict[tuple[str, str], dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for r in records:
        table[(r.clause, r.variant if by_variant else "")][r.subject][r.status] += 1
    lines += ["| clause | " + " | ".join(subjects) + " |", "|---|" + "---|" * len(subjects)]
    for clause, variant in sorted(table, key=lambda key: (clause_key(key[0]), key[1])):
        cells = []
        for subject in subjects:
            c = table[(clause, variant)][subject]
            cells.append(", ".join(f"{n} {s}" for s, n in sorted(c.items(), key=lambda kv: STATUSES.index(kv[0])))
                         or "—")
        lines.append(f"| {clause}{f' ({variant})' if variant else ''} | " + " | ".join(cells) + " |")
    lines += _values_compared(records)
    lines += _architecture_coverage(records) + _memory_table(records) + _resize_table(records)
    lines += _problems(records) + _undefined_without_zero(records)
    skips = Counter(r.message for r in records if r.status == SKIP)
    if skips:
        lines += ["", "## Skipped", ""] + [f"- {n} × {reason}" for reason, n in skips.most_common()]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _problems(records: list[Record]) -> list[str]:
    """Failures that held on every try, apart from intermittent ones; then known issues and XPASSes."""
    lines = []
    steady = [r for r in records if r.status in BAD_STATUSES and not r.intermittent]
    if steady:
        lines += ["", "## Failures (the same on every try)", ""]
        for r in steady:
            lines += [f"### {r.status} {r.case_id}", ""] + ([note(r), ""] if r.expected else [])
            lines += ["```", r.message.strip()[:4000], "```", ""]
    flaky = [r for r in records if r.intermittent]
    if flaky:
        lines += ["", "## Intermittent (the outcomes differ between tries: not reproducible)", ""]
        for r in flaky:
            lines += [f"### INTERMITTENT {r.status} {r.case_id}: {', '.join(r.outcomes)}", ""]
            lines += [note(r), ""] if r.expected else []
            lines += ["```", r.message.strip()[:4000], "```", ""]
    known = [r for r in records if r.status in (XFAIL, XPASS) and not r.intermittent]
    if known:
        lines += ["", "## Known issues", ""] + [f"- {r.status} `{r.case_id}`: {note(r)}" for r in known]
    return lines


# A type of the architecture sweep counts as checked when these clauses ran (did not SKIP) for every subject.
CHECKED_WHEN_RAN = ("P1", "P2", "G1", "G4", "G7")


def classes_with_values_compared(records: list[Record]) -> dict[str, set[tuple[str, str | None]]]:
    """Per subject, the (model, class) pairs whose loaded values G1 compared (a record that compared some
    checkpoint tensor), and the pairs G1 ran on at all, under "attempted"."""
    found: dict[str, set[tuple[str, str | None]]] = defaultdict(set)
    for r in records:
        if r.clause == "G1":
            found["attempted"].add((r.model, r.head))
            if any(r.compared.values()):
                found[r.subject].add((r.model, r.head))
    return found


def _values_compared(records: list[Record]) -> list[str]:
    found = classes_with_values_compared(records)
    if not found["attempted"]:
        return []
    subjects = sorted(subject for subject in found if subject != "attempted")
    return ["", f"Values compared with the checkpoint (G1) on {len(found['attempted'])} classes attempted: "
            + (", ".join(f"{len(found[s])} for {s}" for s in subjects) or "none for any subject") + "."]


def architecture_coverage(records: list[Record]) -> dict[str, Any] | None:
    """The sweep's reach in these records, or None where there is no sweep: types attempted, built (some
    record not a SKIP), checked (CHECKED_WHEN_RAN ran for every subject), classes, each clause's outcomes
    and how many types it reached (a record not a SKIP)."""
    sweep = [r for r in records if r.sweep]
    if not sweep:
        return None
    subjects = sorted({r.subject for r in sweep})
    ran: dict[str, set] = defaultdict(set)
    for r in sweep:
        if r.status != SKIP:
            ran[r.model].add((r.clause, r.subject))
    types = sorted({r.model for r in sweep})
    checked = [t for t in types if all((c, s) in ran[t] for c in CHECKED_WHEN_RAN for s in subjects)]
    by_clause: dict[str, Counter] = defaultdict(Counter)
    for r in sweep:
        by_clause[r.clause][r.status] += 1
    return {"types": len(types), "built": sum(1 for t in types if ran[t]), "checked": len(checked),
            "subjects": subjects, "classes": len({(r.model, r.head) for r in sweep}),
            "clauses": {c: dict(by_clause[c]) for c in sorted(by_clause, key=clause_key)},
            "reached": {c: len({t for t in types if any(k == c for k, _ in ran[t])}) for c in by_clause},
            "unchecked": [t for t in types if t not in checked]}


def _architecture_coverage(records: list[Record]) -> list[str]:
    coverage = architecture_coverage(records)
    if coverage is None:
        return []
    lines = ["", "## Architectures", "",
             f"{coverage['types']} model types attempted, {coverage['built']} built (some record not a SKIP), "
             f"{coverage['checked']} checked ({', '.join(CHECKED_WHEN_RAN)} ran for "
             f"{' and '.join(coverage['subjects'])}), through {coverage['classes']} classes.", "",
             "| clause | " + " | ".join(STATUSES) + " | types with a record not a SKIP |",
             "|---|" + "---|" * (len(STATUSES) + 1)]
    for clause, counts in coverage["clauses"].items():
        lines.append(f"| {clause} | " + " | ".join(str(counts.get(s, "")) for s in STATUSES)
                     + f" | {coverage['reached'][clause]} |")
    if coverage["unchecked"]:
        lines += ["", f"Not checked: {', '.join(coverage['unchecked'])}."]
    return lines


def _mb(values: list) -> str:
    return " / ".join("?" if v is None else f"{v:.0f}" for v in values)


def _memory_table(records: list[Record]) -> list[str]:
    """P3's figures: what each rank allocated while building, against the bound and the baseline."""
    rows = [r for r in records if "peak_anon_mb_by_rank" in r.metrics]
    if not rows:
        return []
    lines = ["", "## Memory at construction (P3)", "",
             f"A {rows[0].metrics['model_mb']:.0f} MB model (largest module {rows[0].metrics['largest_module_mb']:.0f} "
             "MB), built in probe processes. MB allocated per rank (anonymous memory), resident-set peak per rank "
             "(adds checkpoint file pages the loader mapped), the bound, and the same build without ZeRO.", "",
             "| check | subject | world | allocated per rank | resident peak per rank | bound | baseline allocated |",
             "|---|---|---|---|---|---|---|"]
    gpu = any("cuda_peak_mb_by_rank" in r.metrics for r in rows)
    if gpu:  # on a GPU the bound is judged on the CUDA allocator's peak
        lines[-2:] = [lines[-2] + " GPU allocator peak per rank (judged) |", lines[-1] + "---|"]
    for r in sorted(rows, key=lambda r: (r.check, r.world_size, r.subject)):
        m = r.metrics
        lines.append(f"| {r.check} | {r.subject} | {r.world_size} | {_mb(m['peak_anon_mb_by_rank'])} | "
                     f"{_mb(m['peak_mb_by_rank'])} | {m['bound_mb']:.0f} | {_mb([m.get('baseline_peak_anon_mb')])} |"
                     + (f" {_mb(m.get('cuda_peak_mb_by_rank', []))} |" if gpu else ""))
    return lines


def _resize_table(records: list[Record]) -> list[str]:
    """S2's metrics: whether resized embeddings were partitioned at once or held whole until the engine."""
    rows = [r for r in records if "partitioned_at_resize" in r.metrics]
    if not rows:
        return []
    lines = ["", "## Resizing embeddings (S2)", "", "| subject | model | world | partitioned at resize | "
             "bytes held whole per rank until the engine is built |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r.subject, r.model, r.world_size)):
        partitioned = "yes" if r.metrics["partitioned_at_resize"] else "no"
        lines.append(f"| {r.subject} | {r.model} | {r.world_size} | {partitioned} | "
                     f"{r.metrics['whole_bytes_per_rank_after_resize']:,} |")
    return lines


def _undefined_without_zero(records: list[Record]) -> list[str]:
    """Tensors transformers leaves uninitialized without ZeRO (no expected value, so not compared): a fault of
    transformers itself, shown once per model class."""
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in records:
        seen[(r.model, r.head or "")].update(r.metrics.get("undefined_without_zero", []))
    rows = [(model, head, sorted(names)) for (model, head), names in sorted(seen.items()) if names]
    if not rows:
        return []
    return ["", "## Left uninitialized without ZeRO (no expected value: not compared)", "",
            "| model | class | tensors |", "|---|---|---|"] + [
        f"| {model} | {head or '—'} | {', '.join(f'`{n}`' for n in names)} |" for model, head, names in rows]

