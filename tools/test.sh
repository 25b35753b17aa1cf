#!/usr/bin/env bash
# Create the environment if needed, then run the whole test suite (7-11 minutes on an idle 2-core machine, 17 with
# two training jobs beside it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/env.sh requirements-dev.txt
exec .venv/bin/python -m pytest -q "$@"
