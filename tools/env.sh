#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv with the pinned requirements.
# Usage: bash tools/env.sh [requirements file]; prints nothing when the environment is already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
req="${1:-requirements.txt}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=".venv/.installed-$(cat "$req" requirements.txt pyproject.toml | sha256sum | cut -c1-16)-$(basename "$req")"
if [ ! -f "$stamp" ]; then
  echo "installing $req and this repository (editable) into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
  # the repository itself, so its packages import from anywhere; the pinned requirements above are its dependencies
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
  touch "$stamp"
fi
