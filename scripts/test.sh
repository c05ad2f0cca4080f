#!/usr/bin/env bash
# The whole test suite (pytest, which also drives the Fortran unit tests): set up, then run.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/setup.sh"
cd "$ROOT"
exec python -m pytest "$@"
