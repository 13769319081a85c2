"""`zero3-conformance findings`: each new finding of the known-issues file (one not reported upstream yet) in a
folder of its own, findings/<short_name>/:

- README.md: the finding as the known-issues file describes it (the code at fault, whether it is to be filed),
  and every cell and case where the given runs saw it (cases whose outcomes met one of its entries);
- repro.py (and repro_*.py for a second symptom), where the finding has one, and report.md, the bug report in
  the upstream tracker's template: written by hand, never by this command (plain torch, deepspeed and
  transformers, at most 60 lines, deciding its own verdict: REPRODUCER_CONTRACT). `zero3-conformance repro`
  still writes a script from a harness case, for a maintainer of this project; such scripts copy the harness
  and are not findings/'s.

Everything else in a finding's folder is regenerated on every call; a finding the runs did not see says so.
The runs come from run directories, or from an archive of them (`--archive`: a tar file of run directories,
records only), which is how findings/ keeps the runs it was made from and regenerates byte for byte.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .. import known_issues
from ..errors import UsageError
from ..rundir import RunDir
from . import RUN_COMMAND

README = "README.md"  # in every folder this command writes, and in `out` itself
REPRODUCER = "repro.py"  # a finding's own reproducer, written by hand and kept by this command
REPRODUCERS = "repro*.py"  # repro.py and repro_<symptom>.py: every reproducer of a finding
REPORT = "report.md"  # its bug report in the upstream template, written by hand and kept too
ARCHIVE = "runs.tar.xz"  # in findings/: the records of the runs it was made from
REPRODUCER_RUN = RUN_COMMAND.format(n=2)  # a reproducer is written for a world of two ranks
REPRODUCER_CONTRACT = (f"`{REPRODUCER_RUN}` prints one last line, `FINDING REPRODUCED: …` where the finding holds "
                       "or `FINDING ABSENT` where it does not, and exits 1 or 0 (read the line: a stack that passes "
                       "may still abort in gloo at teardown)")
LISTED = 40  # cases listed per finding; the rest are counted


@dataclasses.dataclass
class Sighting:
    run_dir: Path
    record: Any


@dataclasses.dataclass
class Written:
    short_name: str
    disposition: str
    sightings: int
    reproducer: str  # "script, N lines" where the folder holds one, else "none"
    report: bool


def hand_written(path: Path) -> bool:
    """A file of a finding's folder that this command keeps: its reproducers and its report."""
    return path.name == REPORT or path.match(REPRODUCERS)


def reproducers(folder: Path) -> list[Path]:
    return sorted(folder.glob(REPRODUCERS))


@contextlib.contextmanager
def archived_runs(archive: Path) -> Iterator[list[Path]]:
    """The run directories an archive holds (its top-level folders, in name order), unpacked for the call."""
    try:
        with tarfile.open(archive) as tar, tempfile.TemporaryDirectory() as tmp:
            members = [m for m in tar.getmembers() if m.isfile() and not Path(m.name).is_absolute()
                       and ".." not in Path(m.name).parts]
            tar.extractall(tmp, members=members, filter="data")
            yield sorted(p for p in Path(tmp).iterdir() if p.is_dir())
    except (OSError, tarfile.TarError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a tar archive"
        raise UsageError(f"{archive} is not a readable archive of run directories: {why}") from None


def write_archive(run_dirs: Iterable[Path], archive: Path) -> None:
    """A compressed archive of the runs' records and plans (no logs, no summaries), for `archived_runs`."""
    with tarfile.open(archive, "w:xz") as tar:
        for run_dir in run_dirs:
            run = RunDir(run_dir)
            for path in sorted([*run.result_files(), run.plan_path]):
                if path.is_file():
                    info = tar.gettarinfo(str(path), f"{run_dir.name}/{path.name}")
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                    with path.open("rb") as data:
                        tar.addfile(info, data)


def sightings(run_dirs: Iterable[Path], issues: list[known_issues.KnownIssue]) -> dict[str, list[Sighting]]:
    """Short name -> the cases of these runs whose outcomes met an entry of that new finding."""
    seen: dict[str, list[Sighting]] = collections.defaultdict(list)
    for run_dir in run_dirs:
        run = RunDir(run_dir)
        if not run.has_records():
            raise UsageError(run.not_a_run_dir())
        for record in run.records():
            for name in {issue.short_name for issue in known_issues.meeting(record, issues) if not issue.upstream}:
                seen[name].append(Sighting(run_dir, record))
    return seen


def write_all(run_dirs: list[Path], out: Path, issues: list[known_issues.KnownIssue],
              archive: Path | None = None) -> list[Written]:
    """Every new finding's folder under `out`, from `run_dirs` (unpacked from `archive` where given, which the
    index then names as its source)."""
    findings: dict[str, list[known_issues.KnownIssue]] = {}
    for issue in issues:
        if not issue.upstream:
            findings.setdefault(issue.short_name, []).append(issue)
    seen = sightings(run_dirs, issues)
    out.mkdir(parents=True, exist_ok=True)
    for folder in out.iterdir():  # only folders this command wrote, for findings no longer in the file
        if folder.is_dir() and (folder / README).is_file() and folder.name not in findings:
            shutil.rmtree(folder)
    written = []
    for name, entries in sorted(findings.items()):
        folder = out / name
        folder.mkdir(exist_ok=True)
        for stale in folder.iterdir():  # all but the hand-written files is this command's to write
            if not hand_written(stale):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        scripts = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in reproducers(folder)}
        found = seen.get(name, [])
        report = (folder / REPORT).is_file()
        (folder / README).write_text(_readme(name, entries, found, scripts, report), encoding="utf-8")
        written.append(Written(name, dict(entries[0].finding)["disposition"], len(found),
                               ", ".join(f"{n}, {lines} lines" for n, lines in scripts.items()) or "none", report))
    (out / README).write_text(_index(written, run_dirs, out, archive), encoding="utf-8")
    return written


def _readme(name: str, entries: list[known_issues.KnownIssue], found: list[Sighting], scripts: dict[str, int],
            report: bool) -> str:
    described = dict(entries[0].finding)
    lines = [f"# {name}", "", "A new finding of the known-issues file (not reported upstream yet). Regenerated by "
             "`zero3-conformance findings` (all but the reproducers and report.md); do not edit.", "",
             f"- **at fault:** {described['at_fault']}",
             f"- **disposition:** {described['disposition']}: {known_issues.DISPOSITIONS[described['disposition']]}"
             + (f"; {described['not_filed_because']}" if described.get("not_filed_because") else ""),
             f"- **report:** [{REPORT}]({REPORT}), to file at {entries[0].link}" if report
             else f"- **report:** none written yet ({entries[0].link})", ""]
    for entry in entries:
        lines += [f"## {entry.name}", "", " ".join(entry.reason.split()), ""]
        lines += [f"- **{field.replace('_', ' ')}:** {value}" for field, value in entry.finding
                  if field not in ("short_name", "at_fault", "disposition", "not_filed_because")]
        lines += [""]
    lines += ["## Seen", ""]
    if not found:
        lines += ["Not seen in the runs this folder was made from.", ""]
    else:
        cells = sorted({_cell(s.record) for s in found})
        lines += [f"{len(found)} cases in {len(cells)} cells:", ""] + [f"- {cell}" for cell in cells] + [""]
        lines += ["| case | status | outcomes |", "|---|---|---|"]
        lines += [f"| `{s.record.case_id}` | {s.record.raw_status} | {', '.join(s.record.outcomes)} |"
                  for s in found[:LISTED]]
        if len(found) > LISTED:
            lines += [f"| … and {len(found) - LISTED} more | | |"]
        lines += [""]
    lines += ["## Reproducer", ""]
    if scripts:
        lines += [", ".join(f"`{n}`, {count} lines" for n, count in scripts.items())
                  + f" of torch, deepspeed and transformers alone: {REPRODUCER_CONTRACT}.", ""]
    else:
        lines += ["None written yet.", ""]
    return "\n".join(lines)


def _cell(record: Any) -> str:
    cell = record.cell
    return ", ".join(f"{k} {cell[k]}" for k in ("transformers", "deepspeed", "torch", "accelerate", "python")
                     if k in cell) + f"; {cell.get('backend')}, world size {record.world_size}"


def _index(written: list[Written], run_dirs: list[Path], out: Path, archive: Path | None) -> str:
    source = (f"--archive {Path(os.path.relpath(archive, out.parent)).as_posix()}" if archive
              else " ".join(f"--from {d.name}" for d in run_dirs))
    lines = ["# Findings", "", "Each new finding of the known-issues file (not reported upstream yet): the code at "
             "fault, whether it is to be filed, the cells where it was seen, its standalone reproducer and its "
             "report where written. Regenerated (all but the reproducers and reports) by:", "", "```sh",
             f"zero3-conformance findings {source} --out {out.name}", "```", "",
             "Dispositions: " + "; ".join(f"**{k}**, {v}" for k, v in known_issues.DISPOSITIONS.items()) + ".", ""]
    if archive:
        lines += [f"The runs ({len(run_dirs)}, records only): " + ", ".join(f"`{d.name}`" for d in run_dirs) + ".",
                  ""]
    unfinished = [(d, ended.note) for d in run_dirs if (ended := RunDir(d).completion()).note]
    if unfinished:  # a case such a run never reached cannot show a finding here
        lines += ["Runs that did not record their end:", ""] + [f"- `{d.name}`: {note}" for d, note in unfinished]
        lines += [""]
    lines += ["| finding | disposition | cases seen | reproducer | report |", "|---|---|---|---|---|"]
    lines += [f"| [{w.short_name}]({w.short_name}/README.md) | {w.disposition} | {w.sightings} | {w.reproducer} | "
              f"{'[report.md](' + w.short_name + '/report.md)' if w.report else 'none'} |" for w in written]
    return "\n".join(lines) + "\n"
