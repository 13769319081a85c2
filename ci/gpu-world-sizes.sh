#!/usr/bin/env bash
# The world sizes a GPU runner checks: 1, 2, 4, 8 up to the number of visible GPUs, and that number itself
# (one rank per GPU). Prints them comma-separated, for `zero3-conformance run --world-sizes`.
set -euo pipefail
count=$(nvidia-smi -L | grep -c '^GPU ' || true)
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  IFS=, read -ra visible <<< "$CUDA_VISIBLE_DEVICES"
  count=$(( ${#visible[@]} < count ? ${#visible[@]} : count ))
fi
[[ $count -ge 1 ]] || { echo "ci/gpu-world-sizes.sh: no GPU visible" >&2; exit 2; }
sizes=()
for size in 1 2 4 8; do (( size <= count )) && sizes+=("$size"); done
[[ " ${sizes[*]} " == *" $count "* ]] || sizes+=("$count")
(IFS=,; echo "${sizes[*]}")
