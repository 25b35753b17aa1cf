#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv with the pinned requirements.
# Usage: bash tools/env.sh [requirements file]; prints nothing when the environment is already up to date.
# The repository itself is not installed: its packages (datasets, models, util ...) have generic names that would
# hide others (Hugging Face's datasets) outside it. Commands run from the repository root: python main.py,
# python -m tools.predict, python -m pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
req="${1:-requirements.txt}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=".venv/.installed-$(cat "$req" requirements.txt | sha256sum | cut -c1-16)-$(basename "$req")"
if [ ! -f "$stamp" ]; then
  echo "installing $req into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
  # an editable install of this repository left by an earlier version of this script would put its packages on
  # every path: remove it
  .venv/bin/python -m pip uninstall --quiet --disable-pip-version-check --yes detr-family 2>/dev/null || true
  touch "$stamp"
fi
