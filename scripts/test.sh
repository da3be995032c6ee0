#!/usr/bin/env bash
# The whole test suite: installs what is missing, then runs pytest. The
# integration tests start the project's own Kafka and Redis (idempotently).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
