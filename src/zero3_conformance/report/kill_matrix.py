"""The kill matrix (`zero3-conformance mutate`): which clause caught which mutant, as markdown; the report
embeds it."""

from __future__ import annotations

from typing import Any

from ..contract import clause_key


def all_killed(matrix: dict[str, Any]) -> bool:
    """Every mutant is killed, and by each clause (or check) it declares among those run."""
    return all(any(o["verdict"] == "killed" for o in row["clauses"].values()) and
               all(row["clauses"][t]["verdict"] == "killed" for t in row["declared"] if t in row["clauses"])
               for row in matrix["mutants"].values())


MARKS = {"killed": "✗", "survived": "·", "not applicable": "—", "reference fails": "?"}


def render(matrix: dict[str, Any]) -> str:
    rows = matrix["mutants"]
    targets = {t for row in rows.values() for t in row["clauses"]}
    columns = sorted(targets, key=lambda t: (clause_key(t.split("-")[0]), t))
    killed = sum(any(o["verdict"] == "killed" for o in row["clauses"].values()) for row in rows.values())
    lines = ["# Mutation testing: the kill matrix", "",
             f"{killed} of {len(rows)} mutants killed; every declared kill holds: "
             f"{'yes' if all_killed(matrix) else 'NO'}.", "",
             "✗ killed (a case fails for the mutant and passes for the reference) · survived "
             "— no case for the mutant's family ? the reference fails the same case here.", "",
             "| mutant | " + " | ".join(columns) + " | declared |",
             "|---|" + "---|" * len(columns) + "---|"]
    for name, row in rows.items():
        marks = [MARKS[row["clauses"][c]["verdict"]] if c in row["clauses"] else " " for c in columns]
        lines.append(f"| `{name}` | " + " | ".join(marks) + f" | {', '.join(row['declared'])} |")
    lines += ["", "## The mutants", ""] + [f"- `{name}` — {row['doc']}" for name, row in rows.items()]
    return "\n".join(lines) + "\n"
