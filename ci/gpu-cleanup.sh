#!/usr/bin/env bash
# Before and after a GPU job: ends harness processes an earlier job of this runner's user left behind
# (ranks of a world whose parent was killed), then shows what still holds the GPUs, so a job never starts
# on a machine another run is using. Only this user's processes that run the harness are touched.
set -euo pipefail
pattern='zero3_conformance|zero3-conformance'
mapfile -t stray < <(pgrep -u "$(id -u)" -f "$pattern" | grep -vx "$$" || true)
if [[ ${#stray[@]} -gt 0 ]]; then
  echo "ending stray harness processes: ${stray[*]}"
  kill -TERM "${stray[@]}" 2>/dev/null || true
  sleep 5
  kill -KILL "${stray[@]}" 2>/dev/null || true
fi
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
fi
