#!/usr/bin/env bash
# Runs a profile of matrix/matrix.toml, or one cell of it, the way CI does: each cell's environment is
# created by tox from the matrix, the suite runs in it, and its run directory is kept.
#
#   ci/run-cell.sh PROFILE [CELL] [-- RUN_ARGS...]
#   ci/run-cell.sh smoke
#   ci/run-cell.sh default torch2.13.0-ds0.19.8-tf5.24.0-acc1.15.0
#   ci/run-cell.sh gpu torch2.14.1-ds0.19.8-tf5.24.0-acc1.15.0 -- --world-sizes 1,2
#
# Writes $ZERO3_CONFORMANCE_CI_OUT (default runs/ci): <cell>/ (results.jsonl, summary.md, cell.json) and
# report/ (report.md, report.html, report.json). The report goes to $GITHUB_STEP_SUMMARY when that is set.
# Exit status: 0 every cell passes, 1 a cell has failing clauses, 2 bad input.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 ]] || { echo "usage: ci/run-cell.sh PROFILE [CELL] [-- RUN_ARGS...]" >&2; exit 2; }
profile="$1"; shift
cells=()
if [[ $# -gt 0 && "$1" != "--" ]]; then cells=(--cells "$1"); shift; fi
if [[ $# -gt 0 && "$1" == "--" ]]; then shift; fi
out="${ZERO3_CONFORMANCE_CI_OUT:-runs/ci}"
status=0
zero3-conformance matrix --profile "$profile" "${cells[@]}" --out "$out" -- "$@" || status=$?
if [[ -f "$out/report/report.md" ]]; then
  ci/step-summary.sh "$out/report/report.md"
fi
exit "$status"
