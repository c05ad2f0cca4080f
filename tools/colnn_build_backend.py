"""The project's PEP 517 build backend: scikit-build-core for wheels and sdists, setuptools for
the editable install.

A wheel (``pip install .``, ``pip wheel .``, ``python -m build``) carries the native parts:
scikit-build-core runs ``cmake/wheel/CMakeLists.txt``, which builds libcolnn in both
precisions, the coupler, the C binding and the host programs and installs them, with the sbatch
templates, under ``harness/_native`` and ``harness/_data`` (see harness/locate.py).

``pip install -e .`` (scripts/setup.sh) goes to setuptools, as before the switch: the
developer's library lives in the CMake build trees ``build/single`` and ``build/double`` that
scripts/setup.sh configures, so the editable install builds nothing; and setuptools' editable
finder comes after ``sys.path``, so a checkout or worktree on ``PYTHONPATH`` (or the current
directory) still wins. scikit-build-core's own editable modes put their finder in front of
``sys.path``: ``PYTHONPATH=/other/worktree python -m pytest`` would then test the installed
tree's harness without a word.

The CMake source directory is passed here as the config setting ``cmake.source-dir`` rather
than written in pyproject.toml: scikit-build-core's setuptools plugin, present wherever
scikit-build-core is installed, takes over setuptools builds of any project whose pyproject.toml
names one, which would turn the editable install into a CMake build.
"""

from __future__ import annotations

from scikit_build_core import build as _skbuild

__all__ = ["build_sdist", "build_wheel", "get_requires_for_build_sdist",
           "get_requires_for_build_wheel", "prepare_metadata_for_build_wheel",
           "get_requires_for_build_editable", "prepare_metadata_for_build_editable",
           "build_editable"]

ConfigSettings = dict[str, str | list[str]] | None

#: the wheel's CMake project (relative to the project root)
CMAKE_SOURCE_DIR = "cmake/wheel"


def _settings(config_settings: ConfigSettings) -> dict[str, str | list[str]]:
    """The caller's config settings, with the wheel's CMake project unless they name another."""
    settings = dict(config_settings or {})
    settings.setdefault("cmake.source-dir", CMAKE_SOURCE_DIR)
    return settings


def get_requires_for_build_wheel(config_settings: ConfigSettings = None) -> list[str]:
    return _skbuild.get_requires_for_build_wheel(_settings(config_settings))


def prepare_metadata_for_build_wheel(metadata_directory: str,
                                     config_settings: ConfigSettings = None) -> str:
    return _skbuild.prepare_metadata_for_build_wheel(metadata_directory,
                                                     _settings(config_settings))


def build_wheel(wheel_directory: str, config_settings: ConfigSettings = None,
                metadata_directory: str | None = None) -> str:
    return _skbuild.build_wheel(wheel_directory, _settings(config_settings), metadata_directory)


def get_requires_for_build_sdist(config_settings: ConfigSettings = None) -> list[str]:
    return _skbuild.get_requires_for_build_sdist(_settings(config_settings))


def build_sdist(sdist_directory: str, config_settings: ConfigSettings = None) -> str:
    return _skbuild.build_sdist(sdist_directory, _settings(config_settings))


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
