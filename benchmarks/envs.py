"""Creating a matrix cell's environment: tox with tox-uv against tox with plain pip, cold and warm caches.

    python benchmarks/envs.py [--cell torch2.13.0-ds0.19.8-tf5.24.0-acc1.15.0] [--repeat 1]

Each timing is `tox run -e CELL --notest --recreate` in a work directory of its own. Cold: empty uv and
pip caches (fresh directories); warm: the same caches a second time. Plain pip is tox's own virtualenv
runner (`-x testenv.runner=virtualenv`). Prints a table of seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def create(cell: str, workdir: Path, caches: Path, runner: str) -> float:
    env = {**os.environ, "UV_CACHE_DIR": str(caches / "uv"), "PIP_CACHE_DIR": str(caches / "pip")}
    command = [sys.executable, "-m", "tox", "run", "-e", cell, "--notest", "--recreate", "--workdir", str(workdir)]
    if runner == "pip":
        command += ["-x", "testenv.runner=virtualenv"]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"tox failed ({runner}):\n{(done.stdout + done.stderr)[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cell", default="torch2.13.0-ds0.19.8-tf5.24.0-acc1.15.0")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="zero3-envs-") as tmp:
        for runner in ("uv", "pip"):
            caches = Path(tmp) / f"caches-{runner}"
            cold = create(args.cell, Path(tmp) / f"work-{runner}-cold", caches, runner)
            warm = create(args.cell, Path(tmp) / f"work-{runner}-warm", caches, runner)
            rows.append((runner, cold, warm))
    print(f"cell {args.cell}\n")
    print("| installer | cold cache s | warm cache s |")
    print("|---|---|---|")
    for runner, cold, warm in rows:
        print(f"| tox + {'tox-uv' if runner == 'uv' else 'pip (virtualenv runner)'} | {cold:.1f} | {warm:.1f} |")


if __name__ == "__main__":
    main()
