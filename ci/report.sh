#!/usr/bin/env bash
# Aggregates run directories into one compatibility report, e.g. the run directories every cell job of a
# workflow uploaded:
#
#   ci/report.sh OUT ROOT [BASELINE_REPORT_JSON]
#
# Every directory under ROOT holding a cell.json or results.jsonl is a run directory. With a baseline (the
# report.json of an earlier run, e.g. the previous nightly), the report lists what newly fails and what is
# newly fixed per cell. Writes OUT/report.md, report.html, report.json; report.md also goes to
# $GITHUB_STEP_SUMMARY when that is set.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 2 ]] || { echo "usage: ci/report.sh OUT ROOT [BASELINE_REPORT_JSON]" >&2; exit 2; }
out="$1" root="$2" baseline="${3:-}"
mapfile -t run_dirs < <(find "$root" \( -name cell.json -o -name results.jsonl \) -printf '%h\n' | sort -u)
if [[ ${#run_dirs[@]} -eq 0 ]]; then
  echo "ci/report.sh: no run directories under $root" >&2
  exit 2
fi
options=()
if [[ -n "$baseline" ]]; then
  if [[ -f "$baseline" ]]; then
    options=(--baseline "$baseline")
  else
    echo "ci/report.sh: no baseline report at $baseline; reporting without a diff" >&2
  fi
fi
zero3-conformance report "${run_dirs[@]}" --out "$out" "${options[@]}"
ci/step-summary.sh "$out/report.md"
