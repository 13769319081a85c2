#!/usr/bin/env bash
# Appends a markdown file to the job summary when running in GitHub Actions ($GITHUB_STEP_SUMMARY), cut to
# the 1 MiB a step's summary may hold. Outside Actions it does nothing.
set -euo pipefail
[[ -n "${GITHUB_STEP_SUMMARY:-}" ]] || exit 0
limit=$((1024 * 1024 - 200))
if [[ $(wc -c < "$1") -le $limit ]]; then
  cat "$1" >> "$GITHUB_STEP_SUMMARY"
else
  head -c "$limit" "$1" >> "$GITHUB_STEP_SUMMARY"
  printf '\n\n(cut at 1 MiB: the whole report is in the uploaded artifact)\n' >> "$GITHUB_STEP_SUMMARY"
fi
