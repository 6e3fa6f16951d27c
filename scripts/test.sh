#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up (packages, dockerd, .venv), then pytest.
# Unit tests and end-to-end tests against a real local lab (SSH, Docker engines).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/pytest "$@"
