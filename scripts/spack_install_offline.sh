#!/bin/bash
# Builds the project's Spack package `colnn` from this tree with Spack, offline, every dependency
# an external from Debian's packages (spack/externals-debian.yaml), then links a Fortran and a C
# program against the installed prefix (pkg-config and CMake's find_package) and runs them and
# the installed toy host. With --harness-venv VENV it also installs `py-colnn-harness`, its
# Python and Python packages declared external from that venv (the one scripts/setup.sh makes),
# and runs the installed harness. --externals FILE uses another externals file (another
# distribution, another multiarch); --check-externals only checks that its externals are on this
# machine. Nothing is downloaded and nothing outside WORKDIR is written:
#   scripts/spack_install_offline.sh [--harness-venv VENV] [--externals FILE] SPACK_CHECKOUT SPACK_PACKAGES_CHECKOUT [WORKDIR]
#   scripts/spack_install_offline.sh --check-externals [--externals FILE]
# SPACK_CHECKOUT: github.com/spack/spack (a 1.x release; checked with v1.1.0);
# SPACK_PACKAGES_CHECKOUT: github.com/spack/spack-packages at the release made for it (v2025.11.0
# for Spack 1.1). Spack needs clingo, which it would otherwise bootstrap from the network: a venv
# with `pip install clingo` is made in WORKDIR and used as SPACK_PYTHON. COLNN_SPACK_JOBS sets
# `spack install -j` (default: nproc). Where unshare(1) may make a network namespace (root),
# Spack runs in one without network, so a download could not even be tried.
set -euo pipefail
usage() { sed -n '2,17p' "$0" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
venv="" externals=$root/spack/externals-debian.yaml check_only=false
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --harness-venv) [[ $# -ge 2 ]] || usage; venv=$(realpath "$2"); shift 2 ;;
    --externals) [[ $# -ge 2 ]] || usage; externals=$(realpath "$2"); shift 2 ;;
    --check-externals) check_only=true; shift ;;
    *) usage ;;
  esac
done
$check_only || [[ $# -ge 2 ]] || usage
[[ -f $externals ]] || { echo "$externals: no such file" >&2; exit 2; }
log() { printf '[spack-offline] %s\n' "$*" >&2; }
elapsed() { echo "$(( $(date +%s) - $1 )) s"; }

# --- the externals are there (before Spack runs): every prefix, every compiler, and for the
# packages named below the file that shows the Debian package is installed
declare -A probe=(
  [cmake]=bin/cmake [gmake]=bin/make [pkgconf]=bin/pkgconf [openmpi]=bin/mpifort
  [hdf5]=bin/h5fc [openssl]=include/openssl/evp.h [openblas]=libopenblas.so
)
missing=()
while read -r pkg key value; do
  case $key in
    prefix)
      if [[ ! -d $value ]]; then
        missing+=("$pkg: prefix $value does not exist")
      elif [[ -n ${probe[$pkg]:-} && ! -e $value/${probe[$pkg]} ]]; then
        missing+=("$pkg: $value/${probe[$pkg]} does not exist")
      fi ;;
    compiler)
      [[ -x $value ]] || missing+=("$pkg: compiler $value does not exist") ;;
  esac
done < <(awk '
  /^  [a-z0-9-]+:$/ { pkg = substr($1, 1, length($1) - 1) }
  $1 == "prefix:" { print pkg, "prefix", $2 }
  $1 ~ /^(c|cxx|fortran):$/ && $2 ~ /^\// { print pkg, "compiler", $2 }' "$externals")
if ((${#missing[@]})); then
  log "$externals names externals that are not on this machine:"
  printf '  %s\n' "${missing[@]}" >&2
  log "install them (Debian 12: scripts/setup.sh's packages) or edit the file; Spack was not run"
  exit 1
fi
if $check_only; then
  log "every external of $externals is on this machine"
  exit 0
fi
spack_root=$(realpath "$1")
builtin_repo=$(realpath "$2")/repos/spack_repo/builtin
work=$(realpath -m "${3:-$(mktemp -d)}")
[[ -x $spack_root/bin/spack ]] || { echo "$spack_root: not a Spack checkout" >&2; exit 2; }
[[ -d $builtin_repo ]] || { echo "$builtin_repo: no builtin package repository" >&2; exit 2; }
if [[ -n $venv && ! -x $venv/bin/python ]]; then
  echo "$venv: not a Python venv (no bin/python)" >&2; exit 2
fi

mkdir -p "$work/user" "$work/cache" "$work/site"
if [[ ! -x $work/venv/bin/python ]]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q clingo
fi
# only this run's configuration (private user and system scopes, nothing of ~/.spack or
# /etc/spack): the builtin repository from the checkout (else Spack clones it), no
# bootstrapping, no mirrors, installs, stages and caches inside WORKDIR
export SPACK_PYTHON=$work/venv/bin/python
export SPACK_USER_CONFIG_PATH=$work/user SPACK_USER_CACHE_PATH=$work/cache
export SPACK_SYSTEM_CONFIG_PATH=$work/site
unset PYTHONPATH PYTHONHOME
printf 'repos:\n  builtin: %s\n' "$builtin_repo" > "$work/user/repos.yaml"
cat > "$work/user/config.yaml" <<EOF
config:
  install_tree:
    root: $work/opt
  build_stage: [$work/stage]
  source_cache: $work/cache/source
  test_stage: $work/cache/test
EOF
printf 'mirrors:: {}\n' > "$work/user/mirrors.yaml"
spack=("$spack_root/bin/spack")
# loopback only (Open MPI's wrappers, asked by CMake for their flags, complain without it)
if unshare --net sh -c 'ip link set lo up' 2>/dev/null; then
  # shellcheck disable=SC2016  # $0 and $@ belong to the inner shell
  spack=(unshare --net sh -c 'ip link set lo up && exec "$0" "$@"' "$spack_root/bin/spack")
  log "Spack runs without network (unshare --net, loopback only)"
fi
"${spack[@]}" bootstrap disable --scope user >/dev/null

# --- the environment: this tree (a copy, so Spack's build directory stays out of the
# repository) developed as colnn@main, the Debian externals, and for the harness the venv's
src=$work/src env_dir=$work/env
rm -rf "$src" "$env_dir" && mkdir -p "$src" "$env_dir"
git -C "$root" ls-files -z --cached --others --exclude-standard \
  | (cd "$root" && xargs -0 tar c --ignore-failed-read 2>/dev/null) | tar x -C "$src"
specs="  - colnn@main precision=single +openmp +mpi"
cp "$externals" "$env_dir/externals.yaml"
includes="  - $env_dir/externals.yaml"
develop="    colnn:
      spec: colnn@=main
      path: $src"
if [[ -n $venv ]]; then
  # the venv's interpreter (Debian's python3) and each distribution in it that has a recipe
  # in the builtin repository, as externals with the venv as prefix: Spack then finds them in
  # VENV/lib/pythonX.Y/site-packages, where pip put them
  "$venv/bin/python" - "$builtin_repo" "$venv" > "$env_dir/externals-venv.yaml" <<'EOF'
import importlib.metadata as md, platform, re, sys
from pathlib import Path
repo, venv = Path(sys.argv[1]) / "packages", sys.argv[2]
variants = {"py-h5py": "~mpi"}   # a wheel's h5py is serial; Spack's default is +mpi
print("# made by scripts/spack_install_offline.sh from the venv " + venv)
print("packages:")
print(f"  python:\n    externals:\n    - spec: python@{platform.python_version()}\n"
      f"      prefix: {venv}\n    buildable: false")
seen = set()
for dist in sorted(md.distributions(), key=lambda d: d.metadata["Name"].lower()):
    name = "py-" + re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
    if name in seen or not (repo / name.replace("-", "_")).is_dir():
        continue
    seen.add(name)
    version = dist.version.replace("+", "-")
    print(f"  {name}:\n    externals:\n    - spec: {name}@{version}{variants.get(name, '')}\n"
          f"      prefix: {venv}\n    buildable: false")
EOF
  specs+=$'\n'"  - py-colnn-harness@main +keras"
  includes+=$'\n'"  - $env_dir/externals-venv.yaml"
  develop+=$'\n'"    py-colnn-harness:
      spec: py-colnn-harness@=main
      path: $src"
fi
cat > "$env_dir/spack.yaml" <<EOF
# made by scripts/spack_install_offline.sh
spack:
  include:
$includes
  repos:
    colnn: $src/spack/repos/spack_repo/colnn
  specs:
$specs
  develop:
$develop
  view: false
  # only these are built; anything else must be an external (else concretization says so)
  packages:
    all:
      buildable: false
    colnn:
      buildable: true
    py-colnn-harness:
      buildable: true
    compiler-wrapper:
      buildable: true
    gcc-runtime:
      buildable: true
    python-venv:
      buildable: true
  concretizer:
    unify: true
    reuse: false
EOF
t=$(date +%s)
"${spack[@]}" -e "$env_dir" concretize -f > "$work/concretize.log" 2>&1 \
  || { tail -30 "$work/concretize.log" >&2; log "concretization failed (log: $work/concretize.log)"; exit 1; }
log "concretized in $(elapsed "$t"):"
grep -E '^ *(\[e\]|-|\[\+\]) ' "$work/concretize.log" | sed -E 's/ build_system=[^ ]*//; s/ (platform|os|target)=[^ ]*//g' >&2
jobs=${COLNN_SPACK_JOBS:-$(nproc)}
t=$(date +%s)
"${spack[@]}" -e "$env_dir" install -j "$jobs" --fail-fast colnn > "$work/install-colnn.log" 2>&1 \
  || { tail -40 "$work/install-colnn.log" >&2; log "spack install colnn failed (log: $work/install-colnn.log)"; exit 1; }
log "spack install colnn: $(elapsed "$t") ($(grep -E '^  Stage: .*Total' "$work/install-colnn.log" | tail -1 | sed 's/^ *//'))"
prefix=$("${spack[@]}" -e "$env_dir" location -i colnn)
log "installed prefix: $prefix"
(cd "$prefix" && find . -path ./.spack -prune -o -type f -print -o -type l -print \
  | sed -E 's|^\./||; s|^(include/colnn/)[a-z0-9_]+\.mod$|\1*.mod|' | sort | uniq -c \
  | awk '{ print "  " $2 ($1 > 1 ? "  (" $1 " files)" : "") }') >&2

# --- link tests against the installed prefix, with the same gcc/gfortran
t=$(date +%s)
link=$work/link
rm -rf "$link" && mkdir -p "$link"
cd "$link"
# y = kernel^T x + bias: x = (1, 2, 3, 4) -> (5.5, 6.25, 6); every value exact in float32
cat > model.colnn <<'EOF'
colnn 1
precision float32
inputs 4
outputs 3
layers 1
layer dense
name dense
units 3
use_bias true
activation linear
tensor kernel 4 3
1 0 0
0 1 0
0 0 1
1 1 1
tensor bias 3
0.5 0.25 -1
end
EOF
printf "&colnn_coupler\n  model_file = '%s/model.colnn'\n/\n" "$link" > coupler.nml
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
check() {  # NAME EXPECTED ACTUAL
  if [[ $2 == "$3" ]]; then log "  ok: $1"; else log "  FAILED: $1: expected '$2', got '$3'"; exit 1; fi
}
log "link tests against $prefix:"
cat > c_api.c <<'EOF'
#include <stdio.h>
#include "colnn.h"
int main(int argc, char **argv) {
  char err[256];
  colnn_model *m;
  colnn_real x[4] = {1, 2, 3, 4}, y[3];
  if (argc != 2 || colnn_load(argv[1], &m, err, sizeof err)) { puts(err); return 1; }
  if (colnn_forward(m, x, 1, y, err, sizeof err)) { puts(err); return 2; }
  printf("%g %g %g\n", y[0], y[1], y[2]);
  colnn_free(m);
  return 0;
}
EOF
# shellcheck disable=SC2046  # pkg-config's flags are meant to split
gcc -o c_api c_api.c $(pkg-config --cflags --libs colnn)
check "C, pkg-config colnn (colnn.h: load, forward)" "5.5 6.25 6" "$(./c_api model.colnn)"
cat > network.f90 <<EOF
program network
  use colnn
  implicit none
  type(network_t) :: net
  integer :: stat
  character(len=ERRMSG_LEN) :: msg
  real(wp) :: x(4, 2), y(3, 2)
  call net%load('$link/model.colnn', stat, msg)
  if (stat /= 0) error stop trim(msg)
  x(:, 1) = [1.0, 2.0, 3.0, 4.0]
  x(:, 2) = -x(:, 1)
  call net%forward(x, y, stat, msg)
  if (stat /= 0) error stop trim(msg)
  print '(6f8.3)', y
end program network
EOF
# shellcheck disable=SC2046
gfortran -o network network.f90 $(pkg-config --cflags --libs colnn)
check "Fortran, pkg-config colnn (use colnn: network_t)" \
  "   5.500   6.250   6.000  -4.500  -5.750  -8.000" "$(./network)"
# the coupler's example hosts, built with CMake's find_package(colnn) as a GCM's build would
for example in c_host fortran_host; do
  if ! { cmake -S "$src/coupler/examples/$example" -B "$example" -DCMAKE_PREFIX_PATH="$prefix" \
          && cmake --build "$example"; } > "$example.log" 2>&1; then
    cat "$example.log" >&2; log "  FAILED: building coupler/examples/$example"; exit 1
  fi
done
# the C host's inputs are 0.01 ((7 i + 3 j) mod 23) - 0.1 (i feature, j column, from 0)
expected=$(awk 'BEGIN { for (j = 0; j < 37; j++) { for (i = 0; i < 4; i++)
    x[i] = 0.01 * ((7 * i + 3 * j) % 23) - 0.1
  printf "%.5f %.5f %.5f\n", x[0] + x[3] + 0.5, x[1] + x[3] + 0.25, x[2] + x[3] - 1 } }')
actual=$(OMP_NUM_THREADS=1 ./c_host/c_host coupler.nml 4 3 37 8 2 \
  | awk '{ printf "%.5f %.5f %.5f\n", $1, $2, $3 }')
check "C, find_package(colnn) -> colnn::colnn_coupler (coupler/examples/c_host, 37 columns in chunks of 8, 2 threads)" \
  "$expected" "$actual"
check "Fortran, find_package(colnn) -> colnn::colnn_coupler + OpenMP (coupler/examples/fortran_host)" \
  "0 of 500 columns differ from the serial loop (2 threads)" \
  "$(OMP_NUM_THREADS=1 ./fortran_host/fortran_host coupler.nml 4 3 500 16 2 | sed 's/^ *//')"
# the installed toy host (MPI, HDF5, libcrypto): a short truth run on 1 and on 2 ranks
printf "&l96_run\n  mode = 'truth'\n  n_steps = 200\n  output_dir = 'l96'\n/\n" > l96.nml
for ranks in 1 2; do
  rm -rf l96 && mkdir l96
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
    mpirun -n "$ranks" "$prefix/bin/colnn_l96" l96.nml > "l96-$ranks.log" 2>&1 \
    || { cat "l96-$ranks.log" >&2; log "  FAILED: colnn_l96 on $ranks ranks"; exit 1; }
  check "installed colnn_l96, truth run on $ranks rank(s): result.json and truth.h5" \
    '"status": "completed", truth.h5' \
    "$(grep -o '"status": "[a-z]*"' l96/result.json), $(cd l96 && echo *.h5)"
done
log "link tests passed in $(elapsed "$t")"

if [[ -n $venv ]]; then
  t=$(date +%s)
  "${spack[@]}" -e "$env_dir" install -j "$jobs" --fail-fast py-colnn-harness \
    > "$work/install-harness.log" 2>&1 \
    || { tail -40 "$work/install-harness.log" >&2; log "spack install py-colnn-harness failed (log: $work/install-harness.log)"; exit 1; }
  log "spack install py-colnn-harness: $(elapsed "$t")"
  harness_prefix=$("${spack[@]}" -e "$env_dir" location -i py-colnn-harness)
  log "installed prefix: $harness_prefix"
  # the run environment Spack gives the package (PATH, PYTHONPATH, COLNN_LIB, COLNN_HOST_BIN,
  # COLNN_SLURM_TEMPLATES), in a subshell
  (
    eval "$("${spack[@]}" -e "$env_dir" load --sh py-colnn-harness)"
    cd "$link"
    check "harness is the installed one" "$harness_prefix/bin/harness" "$(command -v harness)"
    where=$(python -c 'import harness; print(harness.__file__)')
    check "import harness from the installed prefix" "$harness_prefix" "${where:0:${#harness_prefix}}"
    harness config > harness-config.txt 2>&1 || { cat harness-config.txt >&2; exit 1; }
    if ! grep -q -F "$prefix/lib/libcolnn.so" harness-config.txt \
       || ! grep -q -F "$prefix/bin" harness-config.txt; then
      cat harness-config.txt >&2; log "  FAILED: harness config does not name the colnn prefix"; exit 1
    fi
    log "  ok: harness config names the library and hosts of $prefix"
    harness demo --workdir demo > harness-demo.log 2>&1 \
      || { tail -20 harness-demo.log >&2; log "  FAILED: harness demo"; exit 1; }
    log "  ok: harness demo (Keras -> $prefix/lib/libcolnn.so -> verified): $(tail -1 harness-demo.log)"
  )
fi
log "done: $work"
