"""zero3-conformance run | matrix | report | mutate | repro | findings | env | list."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import known_issues
from .cell import describe_cell, local_device
from .contract import clause_key
from .dsconfig import DEFAULT_ZERO3_CONFIG, load_user_zero3_config
from .errors import UsageError
from .execution.selection import comma_list
from .results import DEFAULT_REPEAT, Record, run_succeeded, write_whole


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zero3-conformance", description=__doc__)
    # The deepspeed launcher passes each rank its local rank this way, before the command (unless
    # --no_local_rank); the harness reads it from the environment, as torchrun's ranks do.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser("run", help="check the installed stack against the ZeRO-3 contract")
    run.add_argument("--out", type=Path, default=Path("runs/latest"), help="run directory (default runs/latest)")
    run.add_argument("--subject", default="", help="comma-separated subjects (default: all)")
    run.add_argument("--models", default="", help="comma-separated zoo families (default: all six, unless "
                                                  "--architectures is given)")
    run.add_argument("--architectures", default="", metavar="TYPES",
                     help="comma-separated model types of the installed transformers (e.g. mistral,whisper), or "
                          "`all`: each built tiny from its default config, through every head class (world size "
                          "2 unless --world-sizes says otherwise)")
    run.add_argument("--clauses", default="", help="comma-separated clause IDs, e.g. P1,G1 (default: all)")
    run.add_argument("--world-sizes", default="", help="comma-separated world sizes (default 1,2,3)")
    run.add_argument("--variants", default="", metavar="NAMES",
                     help="ZeRO-3 configuration variants to check, comma-separated: plain, hpz (ZeRO++ hierarchical "
                          "partitioning), mics (MiCS), each partitioning within a node's ranks (default: plain)")
    run.add_argument("--model", type=Path, default=None, help="a local checkpoint directory of your own")
    run.add_argument("--ds-config", type=Path, default=None, help="your DeepSpeed config (must be stage 3)")
    run.add_argument("--known-issues", type=Path, default=known_issues.DEFAULT_FILE)
    run.add_argument("--timeout", type=float, default=180.0, help="seconds per check before TIMEOUT")
    run.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, metavar="N",
                     help=f"further tries of a case that neither passes nor skips, the last in a fresh world "
                          f"(default {DEFAULT_REPEAT}; 0: none)")
    run.add_argument("--parallel-worlds", type=int, default=None, metavar="N",
                     help="worlds (one per world size) that run at once (default: 2 on CPU with 2 cores or more, "
                          "1 on GPUs)")
    run.add_argument("--quiet", action="store_true")
    run.add_argument("--resume", type=Path, default=None, metavar="DIR",
                     help="finish an interrupted run in DIR: its finished results are kept, the rest run")
    matrix = commands.add_parser("matrix", help="run a profile's cells of the version matrix, each in its tox env")
    matrix.add_argument("--profile", default="smoke",
                        help="profile of matrix/matrix.toml, or several: default,minimum (default smoke)")
    matrix.add_argument("--file", type=Path, default=None, help="matrix file (default matrix/matrix.toml)")
    matrix.add_argument("--out", type=Path, default=Path("runs/matrix"), help="one run directory per cell, and report/")
    matrix.add_argument("--resume", action="store_true", help="keep cells that already finished in --out")
    matrix.add_argument("--cells", default="", help="comma-separated cell names: only these of the profile")
    matrix.add_argument("--jobs", type=int, default=1, help="cells run at once (default 1; each cell's worlds "
                                                            "use as many processes as their world size)")
    matrix.add_argument("--list", action="store_true", help="print the profile's cells and stop")
    matrix.add_argument("--github-matrix", action="store_true",
                        help="print the cells as a GitHub Actions job matrix (JSON) and stop")
    matrix.add_argument("--nodes", type=int, default=1,
                        help="with --github-matrix: a job per cell and node, for worlds across that many machines")
    matrix.add_argument("--write-tox", type=Path, default=None, metavar="PATH",
                        help="write the tox.ini generated from the matrix to PATH and stop")
    matrix.add_argument("--compatibility", type=Path, default=None, metavar="FILE",
                        help="also write the markdown report to FILE (e.g. COMPATIBILITY.md)")
    matrix.add_argument("run_args", nargs="*", help="options passed to each cell's `run` (after --)")
    report = commands.add_parser("report", help="aggregate run directories into a compatibility report")
    report.add_argument("run_dirs", nargs="+", type=Path)
    report.add_argument("--out", type=Path, required=True)
    report.add_argument("--baseline", type=Path, default=None, help="an older report.json to diff against")
    report.add_argument("--kill-matrix", type=Path, default=None, metavar="JSON",
                        help="a kill-matrix.json from `mutate`, shown in the report")
    report.add_argument("--compatibility", type=Path, default=None, metavar="FILE",
                        help="also write the markdown report to FILE (e.g. COMPATIBILITY.md)")
    report.add_argument("--known-issues", type=Path, default=None, metavar="FILE",
                        help="triage every record afresh against FILE, from its raw outcomes (default: as recorded)")
    issues_command = commands.add_parser("known-issues", help="expectations: draft entries from runs' results, or "
                                                                 "compare two files on runs")
    issues_actions = issues_command.add_subparsers(dest="action", required=True, parser_class=_Parser)
    draft = issues_actions.add_parser("draft", help="draft known-issues entries from runs' unexpected results")
    draft.add_argument("run_dirs", nargs="+", type=Path)
    draft.add_argument("--out", type=Path, required=True, help="the draft TOML file to write")
    draft.add_argument("--known-issues", type=Path, default=None, metavar="FILE",
                       help="draft only what FILE does not already expect (default: as recorded)")
    compare = issues_actions.add_parser("compare", help="re-triage runs with two known-issues files and list every "
                                                       "record triaged otherwise (exit 1 if any)")
    compare.add_argument("old", type=Path, help="the known-issues file as it was")
    compare.add_argument("new", type=Path, help="the known-issues file as edited")
    compare.add_argument("run_dirs", nargs="+", type=Path)
    mutate = commands.add_parser("mutate", help="run the mutants of the reference against every clause: the "
                                                "kill matrix")
    mutate.add_argument("--out", type=Path, default=Path("runs/mutate"), help="where kill-matrix.md/.json go")
    mutate.add_argument("--mutants", default="", help="comma-separated mutant names (default: all)")
    mutate.add_argument("--clauses", default="", help="comma-separated clause IDs (default: all)")
    mutate.add_argument("--quiet", action="store_true")
    architectures = commands.add_parser("architectures", help="which model types of the installed transformers "
                                                              "build tiny here, and why the others do not")
    architectures.add_argument("--types", default="", help="comma-separated model types (default: every type "
                                                           "with an AutoModel class)")
    architectures.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the survey as JSON")
    repro = commands.add_parser("repro", help="a finding as a standalone script and a bug report (no harness "
                                              "needed to run them)")
    repro.add_argument("case_id", help="the case id as the reports print it, e.g. "
                                       "G4-from_config_init_matches_baseline[transformers-llama-ws2-fp32]")
    repro.add_argument("--from", dest="run_dir", type=Path, default=Path("runs/latest"),
                       help="the run directory the case was recorded in (default runs/latest)")
    repro.add_argument("--out", type=Path, required=True, help="where repro.py and report.md go")
    findings = commands.add_parser("findings", help="every new finding of the known-issues file in a folder of its "
                                                    "own: where it was seen, beside its hand-written reproducer")
    source = findings.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="run_dirs", type=Path, action="append", metavar="RUN_DIR",
                        help="a run directory to look for the findings in (repeat for several)")
    source.add_argument("--archive", type=Path, metavar="FILE",
                        help="an archive of run directories (as --save-archive writes) to look in instead")
    findings.add_argument("--save-archive", type=Path, metavar="FILE",
                          help="with --from: also keep those runs' records in this archive (.tar.xz)")
    findings.add_argument("--out", type=Path, default=Path("findings"), help="where the folders go (default "
                                                                             "findings)")
    findings.add_argument("--known-issues", type=Path, default=known_issues.DEFAULT_FILE, metavar="FILE")
    commands.add_parser("env", help="print the cell: versions, backend, device")
    commands.add_parser("list", help="list the checks and their clauses")
    return parser


def cmd_env() -> int:
    backend, device = local_device()
    print(json.dumps(describe_cell(backend, device), indent=2))
    return 0


def cmd_list() -> int:
    from .checks.registry import load_checks

    for entry in sorted(load_checks().values(), key=lambda c: clause_key(c.clause)):
        print(f"{entry.id:45s} {entry.summary}")
    return 0


# `run`'s options that say what to check: a resumed run takes them from its plan.
SELECTION_OPTIONS = ("subject", "models", "architectures", "clauses", "world_sizes", "variants", "model", "ds_config",
                     "known_issues", "timeout", "repeat")


def _selection(args: argparse.Namespace) -> Any:
    from .execution.selection import Selection

    return Selection.parse(args.subject, args.models, args.architectures, args.clauses, args.world_sizes,
                           args.variants, str(args.model) if args.model else None,
                           load_user_zero3_config(args.ds_config) if args.ds_config else DEFAULT_ZERO3_CONFIG,
                           args.known_issues, args.timeout, args.repeat)


def cmd_run(args: argparse.Namespace) -> int:
    """A run in worlds the harness starts; inside a world a launcher started, a run in that world."""
    from .mutation import mutants  # noqa: F401 - registers the mutant:NAME subjects a run may name
    from .worlds import launched

    try:
        launch = launched.detect()
    except launched.NotAWorld as exc:
        raise UsageError(str(exc)) from None
    return _run(args) if launch is None else _run_launched(args, launch)


def _run_launched(args: argparse.Namespace, launch: Any) -> int:
    """Every rank joins; rank 0 runs the cases and writes the run directory, the others serve its tasks, and
    every rank exits with rank 0's status."""
    from .execution.runner import quiet_environment
    from .worlds import launched
    from .worlds.world import WorldStartError

    quiet_environment()
    warnings.simplefilter("ignore")  # as a self-started world's ranks do (PYTHONWARNINGS): they are its output
    try:
        ctx = launched.join(launch, local_device()[0])
    except WorldStartError as exc:
        raise UsageError(str(exc)) from None
    if launch.rank != 0:
        status, stuck = launched.serve(ctx)
        launched.note_served(launch, args.resume or args.out, status)
        return launched.leave(status, stuck)
    world = launched.LaunchedWorld(ctx, launch)
    try:
        status = _run(args, world)
    except UsageError:
        world.stop(2)
        raise
    except BaseException:
        world.stop(1)
        raise
    world.stop(status)
    return launched.leave(status, world.stuck)


def _run(args: argparse.Namespace, world: Any = None) -> int:
    from .execution.plan import Run
    from .rundir import RunDir

    if args.repeat < 0:
        raise UsageError(f"--repeat must be 0 or more, not {args.repeat}")
    if args.parallel_worlds is not None and args.parallel_worlds < 1:
        raise UsageError(f"--parallel-worlds must be 1 or more, not {args.parallel_worlds}")
    if args.resume is not None:
        given = [f"--{key.replace('_', '-')}" for key in (*SELECTION_OPTIONS, "out")
                 if getattr(args, key) != build_parser().parse_args(["run"]).__dict__[key]]
        if given:
            raise UsageError(f"--resume takes what to check from its run directory's {RunDir.PLAN}; leave out "
                             f"{', '.join(given)}")
        run = Run.resume(args.resume, world)
    else:
        run = Run(args.out, _selection(args), world=world)
    out, total = run.out, len(run.cases)
    width = len(str(total))

    def progress(record: Record) -> None:
        if not args.quiet:
            print(f"[{len(run.records):{width}d}/{total}] {record.status:7s} {record.case_id} "
                  f"({record.duration_s:.1f}s)", flush=True)

    if run.finished and not args.quiet:
        print(f"resuming {out}: {len(run.finished)} of {total} results kept, {len(run.remaining)} to run", flush=True)
    records = run.execute(args.parallel_worlds, progress)
    ok = run_succeeded(records)
    print(f"{'PASSED' if ok else 'FAILED'}: {len(records)} results in {run.dir.results_path}, summary in "
          f"{run.dir.summary_path}")
    return 0 if ok else 1


def cmd_matrix(args: argparse.Namespace) -> int:
    import importlib.util
    import shutil

    from . import matrix as matrix_file
    from .matrix.runner import COMPLETE, run_profile, served_elsewhere
    from .report import write_report

    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    path = args.file or matrix_file.DEFAULT_FILE
    matrix = matrix_file.load(path)
    cells = matrix.cells(args.profile, comma_list(args.cells))
    if args.nodes < 1:
        raise UsageError(f"--nodes must be at least 1, got {args.nodes}")
    if args.github_matrix:
        print(json.dumps(matrix_file.github_matrix(cells, args.nodes), separators=(",", ":")))
        return 0
    if args.write_tox is not None:
        args.write_tox.write_text(matrix_file.render_tox(matrix), encoding="utf-8")
        return 0
    if args.list:
        for cell in cells:
            print(f"{cell.name}  {' '.join(matrix.requirements(cell))}")
        return 0
    # The tox installed beside this harness, else one on PATH.
    tox = [sys.executable, "-m", "tox"] if importlib.util.find_spec("tox") else ([shutil.which("tox")] if
                                                                               shutil.which("tox") else None)
    if tox is None:
        raise UsageError("tox is not installed here: pip install 'zero3-conformance[matrix]'")

    def progress(index: int, total: int, cell: matrix_file.Cell, info: dict) -> None:
        print(f"[{index}/{total}] {info['status']:15s} {cell.name} ({info.get('seconds', 0):.0f}s)", flush=True)

    run_args = {c.name: [*matrix.cell_run_args(args.profile, c), *args.run_args] for c in cells}
    extras = {c.name: matrix.extras(c) for c in cells}
    run_dirs = run_profile(cells, args.out, tox, path.parent.parent, run_args, args.resume, progress, args.jobs,
                           extras)
    passed_on = ["--", *args.run_args] if args.run_args else []
    options = [f"--cells {args.cells}" if args.cells else "", f"--out {args.out}", "--resume" if args.resume else "",
               f"--compatibility {args.compatibility}" if args.compatibility else ""]
    command = " ".join(filter(None, ["zero3-conformance matrix --profile", args.profile, *options, *passed_on]))
    served = served_elsewhere(run_dirs)
    report = write_report([d for d in run_dirs if d not in served], args.out / "report", command=command,
                          issues=known_issues.load(),
                          omitted={name: matrix.omitted[name] for name in args.profile.split(",")})
    _copy_markdown(args.out / "report", args.compatibility)
    passed = all(c["passed"] for c in report["cells"] if c["status"] == COMPLETE)
    for run_dir, info in served.items():
        print(f"{run_dir.name}: {info['message']}; the run there exited {info['exit_status']}")
        passed = passed and info["exit_status"] == 0
    print(f"report in {args.out / 'report'}/report.md: of {len(report['cells'])} cells, "
          f"{sum(c['passed'] for c in report['cells'])} without unexpected failures, "
          f"{sum(c['clean'] for c in report['cells'])} where every clause held")
    return 0 if passed else 1


def _copy_markdown(report_dir: Path, target: Path | None) -> None:
    if target is not None:
        write_whole(target, (report_dir / "report.md").read_text(encoding="utf-8"))


def cmd_mutate(args: argparse.Namespace) -> int:
    from .checks.registry import load_checks
    from .execution.runner import Runner
    from .mutation import kill
    from .mutation.mutants import MUTANTS
    from .report import kill_matrix

    names = comma_list(args.mutants) or sorted(MUTANTS)
    unknown = [n for n in names if n not in MUTANTS]
    if unknown:
        raise UsageError(f"unknown mutant {unknown[0]!r}; known: {', '.join(sorted(MUTANTS))}")
    known_clauses = {c.clause for c in load_checks().values()}
    clauses = comma_list(args.clauses) or sorted(known_clauses)
    if set(clauses) - known_clauses:
        raise UsageError(f"unknown clause {sorted(set(clauses) - known_clauses)[0]!r}; known: "
                         f"{', '.join(sorted(known_clauses, key=clause_key))}")

    def progress(name: str, target: str, outcome: dict) -> None:
        if not args.quiet:
            print(f"{name:28s} {target:28s} {outcome['verdict']}", flush=True)

    runner = Runner(DEFAULT_ZERO3_CONFIG, repeat=0)  # a mutant that hangs would cost its limit on every try
    try:
        matrix = kill.kill_matrix(runner, names, clauses, progress)
    finally:
        runner.close()
    kill.write(args.out, matrix)
    print(kill_matrix.render(matrix).split("\n## The mutants")[0].rstrip())
    print(f"kill matrix in {args.out}/kill-matrix.md and kill-matrix.json")
    return 0 if kill_matrix.all_killed(matrix) else 1


def _say_unfinished(run_dirs: Sequence[Path]) -> None:
    """One line for each run directory whose run did not record that it finished."""
    from .rundir import RunDir

    for run_dir in run_dirs:
        if note := RunDir(run_dir).completion().note:
            print(f"{run_dir}: {note}")


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    command = "zero3-conformance report " + " ".join(map(str, args.run_dirs)) + f" --out {args.out}" + (
        f" --known-issues {args.known_issues}" if args.known_issues else "") + (
        f" --compatibility {args.compatibility}" if args.compatibility else "")
    issues = known_issues.load(args.known_issues) if args.known_issues else None
    report = write_report(args.run_dirs, args.out, args.baseline, command, args.kill_matrix, issues)
    _say_unfinished(args.run_dirs)
    _copy_markdown(args.out, args.compatibility)
    print(f"report in {args.out}/report.md and report.json: {len(report['cells'])} cells, "
          f"{len(report['failures'])} failures")
    return 0


def cmd_known_issues(args: argparse.Namespace) -> int:
    from .report.draft import draft
    from .report.retriage import compare

    if args.action == "compare":
        result = compare(args.run_dirs, known_issues.load(args.old), known_issues.load(args.new))
        _say_unfinished(args.run_dirs)
        for line in result.differences:
            print(line)
        print(result.summary())
        return 1 if result.differences else 0

    issues = known_issues.load(args.known_issues) if args.known_issues else None
    text = draft(args.run_dirs, issues)
    _say_unfinished(args.run_dirs)
    try:
        write_whole(args.out, text)
    except OSError as exc:
        raise UsageError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    print(f"{text.count('[[issue]]')} draft entries in {args.out}: fill each link (or triage it as a new finding) "
          "before use")
    return 0


def cmd_architectures(args: argparse.Namespace) -> int:
    from . import architectures

    known = architectures.model_types()
    types = comma_list(args.types) or known
    unknown = [t for t in types if t not in known]
    if unknown:
        raise UsageError(f"unknown model type {unknown[0]!r}: not a type with an AutoModel class in "
                         f"transformers {_transformers_version()}")
    results = architectures.survey(types)
    for result in results:
        print(f"{result.model_type:40s} " + (f"built tiny: {result.parameters:,} parameters" if result.built
                                             else f"not built: {result.reason}"))
    built = sum(r.built for r in results)
    print(f"{built} of {len(results)} model types build tiny (at most {architectures.MAX_PARAMETERS:,} "
          f"parameters) with transformers {_transformers_version()}")
    if args.json is not None:
        write_whole(args.json, json.dumps([dataclasses.asdict(r) for r in results], indent=1) + "\n")
    return 0


def cmd_repro(args: argparse.Namespace) -> int:
    from . import repro

    made = repro.write(args.case_id, args.run_dir, args.out)
    _say_unfinished([args.run_dir])
    if made.script is None:
        print(f"no standalone script for {args.case_id}: {made.why}; {args.out / 'report.md'} gives the harness "
              f"command that reruns it")
    else:
        print(f"wrote {args.out / 'repro.py'} and {args.out / 'report.md'}; run: "
              f"{repro.RUN_COMMAND.format(n=made.record.world_size)}")
    return 0


def cmd_findings(args: argparse.Namespace) -> int:
    from .repro import findings

    issues = known_issues.load(args.known_issues)
    if args.archive is not None:
        if args.save_archive is not None:
            raise UsageError("--save-archive goes with --from: an archive is kept from run directories")
        with findings.archived_runs(args.archive) as run_dirs:
            written = findings.write_all(run_dirs, args.out, issues, archive=args.archive)
    else:
        written = findings.write_all(args.run_dirs, args.out, issues)
        if args.save_archive is not None:
            findings.write_archive(args.run_dirs, args.save_archive)
        _say_unfinished(args.run_dirs)
    for each in written:
        print(f"{args.out / each.short_name}: {each.disposition}; {each.sightings} cases seen; reproducer: "
              f"{each.reproducer}; report: {'yes' if each.report else 'none'}")
    return 0


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "env":
            return cmd_env()
        if args.command == "list":
            return cmd_list()
        if args.command == "matrix":
            return cmd_matrix(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "mutate":
            return cmd_mutate(args)
        if args.command == "known-issues":
            return cmd_known_issues(args)
        if args.command == "architectures":
            return cmd_architectures(args)
        if args.command == "repro":
            return cmd_repro(args)
        if args.command == "findings":
            return cmd_findings(args)
        return cmd_run(args)
    except UsageError as exc:
        print(f"zero3-conformance: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
