#!/usr/bin/env bash
# Idempotent set-up on Debian 12 (as root): system packages, the Python venv, and both builds
# (single and double precision) of the Fortran library. A second run installs nothing and
# only rebuilds what changed. Sourced by scripts/main.sh and scripts/test.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

APT_PACKAGES=(
  gcc gfortran cmake make pkg-config git ca-certificates
  libopenblas-dev libopenblas-openmp-dev libopenmpi-dev openmpi-bin libpmix-dev libhdf5-dev libssl-dev
  slurm-wlm munge
  # the tests' tools: shellcheck for the scripts they generate, debootstrap for the root file
  # system of the Apptainer image (tests/test_image.py builds it with `harness image build`),
  # iproute2 (ip, ss) and util-linux (nsenter, unshare) for the multi-node Slurm on one machine
  # (scripts/local_slurm_cluster.sh: network namespaces, veth pairs, a bridge)
  shellcheck debootstrap iproute2 util-linux
  python3 python3-venv python3-dev
)

log() { printf '[setup] %s\n' "$*" >&2; }

install_apt_packages() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
      log "missing Debian packages: ${missing[*]} (run this as root, or install them)"
      exit 1
    fi
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

setup_venv() {
  # Debian's python3 (not whatever python3 is first on PATH) so the venv is the same everywhere
  local py=/usr/bin/python3
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating the Python venv in $VENV"
    "$py" -m venv "$VENV"
  fi
  local want have=""
  want=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
  [[ -f "$VENV/.colnn-installed" ]] && have=$(cat "$VENV/.colnn-installed")
  if [[ "$want" != "$have" ]]; then
    # the test extra brings scikit-build-core (tests/test_wheel.py builds the wheel without
    # build isolation) and fpm (tests/test_fpm.py); -e goes to setuptools' editable install
    # (tools/colnn_build_backend.py): the library stays in build/single and build/double
    log "installing Python packages (TensorFlow, h5py, numpy, pytest, scikit-build-core, fpm, ...) into the venv"
    "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "${ROOT}[keras,test]"
    echo "$want" > "$VENV/.colnn-installed"
  fi
}

build_library() {
  local precision=$1 double=OFF
  [[ $precision == double ]] && double=ON
  local dir="$ROOT/build/$precision"
  # the OpenMP build of OpenBLAS: libcolnn runs column blocks on OpenMP threads and calls BLAS
  # inside them, which this build then runs serially instead of starting threads of its own
  local blas multiarch
  multiarch=$(gcc -print-multiarch)
  blas=/usr/lib/$multiarch/openblas-openmp/libopenblas.so.0
  [[ -f $blas ]] || blas=""
  if [[ ! -f "$dir/CMakeCache.txt" ]]; then
    log "configuring the $precision-precision build in $dir"
    cmake -S "$ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DCOLNN_DOUBLE=$double \
      -DCOLNN_BLAS_LIBRARIES="$blas" \
      -DCMAKE_INSTALL_PREFIX="$ROOT/build/install-$precision" >/dev/null
  fi
  if ! cmake --build "$dir" -j "$(nproc)" >"$dir/build.log" 2>&1; then
    cat "$dir/build.log" >&2
    log "the $precision-precision build failed (log: $dir/build.log)"
    exit 1
  fi
}

install_apt_packages
setup_venv
build_library single
build_library double
export PATH="$VENV/bin:$PATH"
