#!/usr/bin/env bash
# The main job on its embedded default (local, no cluster): set up, then run.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/setup.sh"
cd "$ROOT"
exec harness demo "$@"
