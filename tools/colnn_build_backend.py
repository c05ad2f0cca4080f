"""The project's PEP 517 build backend: scikit-build-core for wheels and sdists, setuptools for
the editable install.

A wheel (``pip install .``, ``pip wheel .``, ``python -m build``) carries the native parts:
scikit-build-core runs ``cmake/wheel/CMakeLists.txt``, which builds libcolnn in both
precisions, the coupler, the C binding and the host programs and installs them, with the sbatch
templates, under ``harness/_native`` (see harness/locate.py).

``pip install -e .`` (scripts/setup.sh) goes to setuptools, exactly as before the switch: the
developer's library lives in the CMake build trees ``build/single`` and ``build/double`` that
scripts/setup.sh configures, so the editable install builds nothing; and setuptools' editable
finder comes after ``sys.path``, so a checkout or worktree on ``PYTHONPATH`` (or the current
directory) still wins. scikit-build-core's editable modes install their finder in front of
``sys.path`` instead: ``PYTHONPATH=/other/worktree python -m pytest`` would then test the
installed tree's harness without a word.
"""

from __future__ import annotations

from typing import Any

from scikit_build_core.build import (build_sdist, build_wheel, get_requires_for_build_sdist,
                                     get_requires_for_build_wheel,
                                     prepare_metadata_for_build_wheel)

__all__ = ["build_sdist", "build_wheel", "get_requires_for_build_sdist",
           "get_requires_for_build_wheel", "prepare_metadata_for_build_wheel",
           "get_requires_for_build_editable", "prepare_metadata_for_build_editable",
           "build_editable"]

ConfigSettings = dict[str, Any] | None


def get_requires_for_build_editable(config_settings: ConfigSettings = None) -> list[str]:
    return ["setuptools>=64"]


def prepare_metadata_for_build_editable(metadata_directory: str,
                                        config_settings: ConfigSettings = None) -> str:
    from setuptools import build_meta
    return build_meta.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_editable(wheel_directory: str, config_settings: ConfigSettings = None,
                   metadata_directory: str | None = None) -> str:
    from setuptools import build_meta
    return build_meta.build_editable(wheel_directory, config_settings, metadata_directory)
