#!/usr/bin/env bash
# Installs what the CI scripts need on the host, into the current Python: the harness itself without its
# heavy dependencies (each cell installs torch, deepspeed, transformers and accelerate in its own tox
# environment), and tox with tox-uv (pyproject.toml's `matrix` extra).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --no-deps -e .
python -m pip install -q "packaging>=20" "tox>=4" "tox-uv>=1"
