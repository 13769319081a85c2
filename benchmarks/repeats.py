"""What repeats cost: the same run with no repeats (`--repeat 0`) and with the default ones, side by side.

    python benchmarks/repeats.py [--rounds 2] [-- RUN OPTIONS]

Each round runs `zero3-conformance run` twice, once each way, alternating which goes first, into fresh run
directories. Only cases that did not pass are tried again, so on an environment where everything passes the
two should cost the same; the table shows the wall time of each, the ratio, and how many cases were tried
more than once and were intermittent (outcomes that differ).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_run(out: Path, repeat: str, run_args: list[str]) -> tuple[float, list[dict]]:
    command = [sys.executable, "-m", "zero3_conformance.cli", "run", "--out", str(out), "--quiet", *run_args]
    if repeat != "default":
        command += ["--repeat", repeat]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"run failed ({done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}")
    lines = (out / "results.jsonl").read_text().splitlines()
    return seconds, [json.loads(line) for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("run_args", nargs="*", help="options for `zero3-conformance run` (after --)")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"0": [], "default": []}
    tried_again: dict[str, list[int]] = {"0": [], "default": []}
    flaky: dict[str, list[int]] = {"0": [], "default": []}
    with tempfile.TemporaryDirectory(prefix="zero3-repeats-") as tmp:
        for round_number in range(args.rounds):
            order = ("0", "default") if round_number % 2 == 0 else ("default", "0")
            for repeat in order:
                seconds, records = timed_run(Path(tmp) / f"{repeat}-{round_number}", repeat, args.run_args)
                times[repeat].append(seconds)
                tried_again[repeat].append(sum(len(r["outcomes"]) > 1 for r in records))
                flaky[repeat].append(sum(r["intermittent"] for r in records))
                print(f"round {round_number + 1}, --repeat {repeat}: {seconds:.1f} s, {len(records)} records",
                      file=sys.stderr, flush=True)
    print("| repeats | wall s (each round) | median | cases tried more than once | intermittent |")
    print("|---|---|---|---|---|")
    for repeat in ("0", "default"):
        label = "none (`--repeat 0`)" if repeat == "0" else "default (2 more tries)"
        print(f"| {label} | {' / '.join(f'{t:.1f}' for t in times[repeat])} | {statistics.median(times[repeat]):.1f} "
              f"| {' / '.join(map(str, tried_again[repeat]))} | {' / '.join(map(str, flaky[repeat]))} |")
    ratio = statistics.median(times["default"]) / statistics.median(times["0"])
    print(f"\nratio of medians, default repeats / none: {ratio:.3f}")


if __name__ == "__main__":
    main()
