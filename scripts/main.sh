#!/usr/bin/env bash
# The main job on its embedded default (local executor, no cluster): set up, then run a small
# study (examples/study/l96-small.toml) from truth data to the report in studies/l96-small/.
# Extra arguments go to `harness study` (e.g. --executor slurm, -o DIR, --stages data,train).
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/setup.sh"
cd "$ROOT"
harness study examples/study/l96-small.toml -o studies/l96-small "$@"
echo "report: $ROOT/studies/l96-small/report/report.md"
