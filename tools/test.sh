#!/usr/bin/env bash
# Create the environment if needed, then run the whole test suite (about 17 minutes on 2 CPU cores shared with two
# training jobs; less on an idle machine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/env.sh requirements-dev.txt
exec .venv/bin/python -m pytest -q "$@"
