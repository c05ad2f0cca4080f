#!/bin/bash
# Concretizes the project's Spack environment (spack.yaml) without network access, from local
# checkouts of Spack and of its package repository, in a scratch copy of the tree (nothing is
# written into the repository). How the note's concretized specs were produced:
#   scripts/spack_concretize_offline.sh SPACK_CHECKOUT SPACK_PACKAGES_CHECKOUT [WORKDIR]
# SPACK_CHECKOUT: github.com/spack/spack (1.x); SPACK_PACKAGES_CHECKOUT: github.com/spack/spack-packages.
# Spack needs clingo, which it would otherwise bootstrap from the network: a venv with
# `pip install clingo` is made in WORKDIR and used as SPACK_PYTHON.
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,8p' "$0" >&2; exit 2; }
spack_root=$(realpath "$1")
builtin_repo=$(realpath "$2")/repos/spack_repo/builtin
work=$(realpath -m "${3:-$(mktemp -d)}")
root=$(cd "$(dirname "$0")/.." && pwd)
[[ -x $spack_root/bin/spack ]] || { echo "$spack_root: not a Spack checkout" >&2; exit 2; }
[[ -d $builtin_repo ]] || { echo "$builtin_repo: no builtin package repository" >&2; exit 2; }

mkdir -p "$work/user" "$work/cache" "$work/site"
if [[ ! -x $work/venv/bin/python ]]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q clingo
fi
# only this run's configuration (private user and system scopes, nothing of ~/.spack or
# /etc/spack): the builtin repository from the checkout (else Spack clones it), no
# bootstrapping, the compilers found on this machine
export SPACK_PYTHON=$work/venv/bin/python
export SPACK_USER_CONFIG_PATH=$work/user SPACK_USER_CACHE_PATH=$work/cache
export SPACK_SYSTEM_CONFIG_PATH=$work/site
printf 'repos:\n  builtin: %s\n' "$builtin_repo" > "$work/user/repos.yaml"
spack=$spack_root/bin/spack
"$spack" bootstrap disable --scope user >/dev/null
"$spack" compiler find --scope user >/dev/null

env_dir=$work/env
rm -rf "$env_dir" && mkdir -p "$env_dir"
git -C "$root" ls-files -z --cached --others --exclude-standard \
  | (cd "$root" && xargs -0 tar c --ignore-failed-read 2>/dev/null) | tar x -C "$env_dir"
"$spack" -e "$env_dir" concretize -f | tee "$work/concretize.log"
echo "root specs:" >&2
grep -E '^ -   [a-z0-9]{7}  [a-z]' "$work/concretize.log" | sed -E 's/ build_system=.*//' >&2
