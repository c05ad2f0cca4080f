"""Where the harness finds its native parts: libcolnn of each precision, the host programs, the
sbatch templates, and the CMake package and pkg-config files a GCM build links against.

Each is looked up in three places, first match wins:

1. the environment (overrides): ``COLNN_LIB`` / ``COLNN_LIB_DOUBLE`` (a library file),
   ``COLNN_HOST_BIN`` (a directory with ``colnn_l96``, ``colnn_sw``), ``COLNN_SLURM_TEMPLATES``
   (a directory with the ``*.sbatch.in`` templates);
2. the package itself, when it was installed from a wheel: ``harness/_native/<precision>/`` is
   an installed CMake prefix (``lib/``, ``include/colnn/``, ``bin/``) and ``harness/_data/slurm/``
   holds the templates (cmake/wheel/CMakeLists.txt puts them there), found with
   ``importlib.resources``;
3. the source tree the package runs from (an editable install or a checkout): the CMake build
   trees ``build/single`` and ``build/double`` that scripts/setup.sh makes, and ``slurm/``.
"""

from __future__ import annotations

import importlib.resources
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from .errors import HarnessError

__all__ = ["Precision", "PRECISIONS", "Located", "SOURCE_ROOT", "package_dir", "packaged_prefix",
           "library", "host_bin_dir", "slurm_templates", "install_prefix", "cmake_dir",
           "pkgconfig_dir", "build_info", "not_found_hint", "report", "LIBRARY_ENV"]

Precision = Literal["single", "double"]
PRECISIONS: tuple[Precision, ...] = ("single", "double")

#: the checkout this module sits in, when it runs from one (not meaningful in a wheel install)
SOURCE_ROOT = Path(__file__).resolve().parent.parent
#: the environment variable that names each precision's library
LIBRARY_ENV: dict[str, str] = {"single": "COLNN_LIB", "double": "COLNN_LIB_DOUBLE"}


@dataclass(frozen=True)
class Located:
    """A path and where it came from: an environment variable's name, ``wheel`` or
    ``build tree``. ``exists`` is False for the build-tree guess when nothing was found."""
    path: Path
    origin: str

    @property
    def exists(self) -> bool:
        return self.path.exists()


def package_dir() -> Path | None:
    """The installed ``harness`` package directory (None when it is not on a file system, e.g.
    inside a zip: a library cannot be loaded from there)."""
    root = importlib.resources.files(__package__ or "harness")
    return root if isinstance(root, Path) else None


def packaged_prefix(precision: Precision) -> Path | None:
    """``harness/_native/<precision>``, the prefix a wheel carries, or None (not a wheel)."""
    pkg = package_dir()
    prefix = pkg / "_native" / precision if pkg is not None else None
    return prefix if prefix is not None and prefix.is_dir() else None


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise HarnessError(f"unknown precision {precision!r} (single or double)")


def library(precision: Precision = "single") -> Located:
    """libcolnn of `precision`."""
    _check_precision(precision)
    env = LIBRARY_ENV[precision]
    if os.environ.get(env):
        return Located(Path(os.environ[env]), env)
    prefix = packaged_prefix(precision)
    if prefix is not None:
        return Located(prefix / "lib" / "libcolnn.so", "wheel")
    return Located(SOURCE_ROOT / "build" / precision / "fortran" / "libcolnn.so", "build tree")


def host_bin_dir(precision: Precision = "single") -> Located:
    """The directory with the built-in host programs (``colnn_l96``, ``colnn_sw``)."""
    _check_precision(precision)
    if os.environ.get("COLNN_HOST_BIN"):
        return Located(Path(os.environ["COLNN_HOST_BIN"]), "COLNN_HOST_BIN")
    prefix = packaged_prefix(precision)
    if prefix is not None:
        return Located(prefix / "bin", "wheel")
    return Located(SOURCE_ROOT / "build" / precision / "coupler", "build tree")


def slurm_templates() -> Located:
    """The directory with the sbatch templates (``stage.sbatch.in``, ``farm.sbatch.in``)."""
    if os.environ.get("COLNN_SLURM_TEMPLATES"):
        return Located(Path(os.environ["COLNN_SLURM_TEMPLATES"]), "COLNN_SLURM_TEMPLATES")
    pkg = package_dir()
    if pkg is not None and (pkg / "_data" / "slurm").is_dir():
        return Located(pkg / "_data" / "slurm", "wheel")
    return Located(SOURCE_ROOT / "slurm", "source tree")


def not_found_hint(what: str, located: Located, env: str) -> str:
    """How to get `what` (found missing at `located`) where the harness looks; `env` is the
    environment variable that overrides the lookup."""
    if located.origin == env:
        return f"${env} points there: correct it, or unset it to use the installed {what}"
    if located.origin == "wheel":
        return (f"the installed package lacks its {what} (`harness config` says what the wheel "
                f"was built with): reinstall it, or set ${env}")
    return (f"this harness runs from the source tree {SOURCE_ROOT}: build the project "
            f"(scripts/setup.sh), install the wheel (pip install .), or set ${env}")


def install_prefix(precision: Precision = "single") -> Located:
    """An installed prefix of `precision` (lib/cmake/colnn, lib/pkgconfig, include/colnn): the
    wheel's, else ``build/install-<precision>`` of the source tree (scripts/setup.sh configures
    the build trees with that prefix: ``cmake --install build/<precision>`` fills it)."""
    _check_precision(precision)
    prefix = packaged_prefix(precision)
    if prefix is not None:
        return Located(prefix, "wheel")
    tree = SOURCE_ROOT / "build" / f"install-{precision}"
    if (tree / "lib" / "cmake" / "colnn" / "colnnConfig.cmake").is_file():
        return Located(tree, "build tree")
    raise HarnessError(
        f"no installed colnn ({precision} precision) to point a build at: this harness runs "
        f"from the source tree {SOURCE_ROOT} and {tree} is empty; run `cmake --install "
        f"build/{precision}` (scripts/setup.sh configures that prefix), or install the wheel "
        f"(pip install .), which carries one")


def _prefix_subdir(precision: Precision, sub: str, marker: str) -> Path:
    prefix = install_prefix(precision).path
    path = prefix / sub
    if not (path / marker).is_file():
        raise HarnessError(f"{path / marker} missing: the colnn installation in {prefix} is "
                           f"incomplete; reinstall it")
    return path


def cmake_dir(precision: Precision = "single") -> Path:
    """The directory with colnnConfig.cmake (``-Dcolnn_DIR=...`` or CMAKE_PREFIX_PATH)."""
    return _prefix_subdir(precision, "lib/cmake/colnn", "colnnConfig.cmake")


def pkgconfig_dir(precision: Precision = "single") -> Path:
    """The directory with colnn.pc and colnn_coupler.pc (``PKG_CONFIG_PATH=...``)."""
    return _prefix_subdir(precision, "lib/pkgconfig", "colnn.pc")


def build_info() -> dict[str, object] | None:
    """What the wheel was built with (``harness/_native/build-info.json``), None outside a
    wheel install."""
    pkg = package_dir()
    path = pkg / "_native" / "build-info.json" if pkg is not None else None
    if path is None or not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"{path}: cannot read the wheel's build record: {exc}") from None
    return info if isinstance(info, dict) else None


def _line(label: str, get: Callable[[], Path | Located]) -> str:
    try:
        value = get()
    except HarnessError as exc:
        return f"  {label:16s} - ({exc})"
    if isinstance(value, Located):
        state = "" if value.exists else ", MISSING"
        return f"  {label:16s} {value.path} ({value.origin}{state})"
    return f"  {label:16s} {value}"


def report() -> str:
    """What `harness config` prints without an option: every native part, where it comes from,
    and what the wheel was built with."""
    pkg = package_dir()
    wheel = any(packaged_prefix(p) is not None for p in PRECISIONS)
    lines = [f"harness package  {pkg} ({'installed from a wheel' if wheel else 'source tree'})"]
    for precision in PRECISIONS:
        lines.append(f"{precision} precision:")
        lines.append(_line("library", lambda: library(precision)))
        lines.append(_line("host programs", lambda: host_bin_dir(precision)))
        try:
            install_prefix(precision)
        except HarnessError:
            lines.append(f"  {'prefix':16s} - (none for a GCM build: `cmake --install "
                         f"build/{precision}` fills build/install-{precision})")
            continue
        lines.append(_line("prefix", lambda: install_prefix(precision)))
        lines.append(_line("cmake dir", lambda: cmake_dir(precision)))
        lines.append(_line("pkg-config dir", lambda: pkgconfig_dir(precision)))
    lines.append("both precisions:")
    lines.append(_line("slurm templates", slurm_templates))
    info = build_info()
    if info is not None:
        lines.append("wheel built with:")
        for key in ("version", "build_type", "fortran_compiler", "c_compiler", "blas", "cmake"):
            lines.append(f"  {key.replace('_', ' '):16s} {info.get(key, '?')}")
        notes = info.get("notes") or []
        for note in notes if isinstance(notes, list) else [notes]:
            lines.append(f"  note: {note}")
    return "\n".join(lines)
