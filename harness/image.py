"""An emulation of ``apptainer build --sandbox`` for definitions with ``Bootstrap: debootstrap``,
and of ``apptainer run|exec|test --contain --cleanenv`` on the sandbox it makes.

Apptainer cannot be installed where this project is developed, so without this the image's
definition (containers/colnn-debian.def) would only ever be read. This module builds its root
file system the way Apptainer's documentation describes a build, and runs programs in it:

1. **bootstrap**: ``debootstrap --variant=minbase --exclude=openssl,udev,debconf-i18n,e2fsprogs
   --include=apt,<Include> --arch=<arch> <OSVersion> ROOT <MirrorURL>`` (the arguments Apptainer's
   debootstrap agent passes), then ``/.singularity.d`` with an empty runscript;
2. **%setup** on the host: ``/bin/sh -ex``, the host's environment plus ``APPTAINER_ROOTFS``, in the
   build's working directory (the *context*);
3. **%files**: ``src [dest]`` a line, ``src`` relative to the context (globs allowed), ``dest``
   inside the root (``src``'s own path when omitted), copied with ``cp -fLr``;
4. **%post** inside the root: ``/bin/sh -ex /.post.script`` in ``/``, a clean environment with
   ``APPTAINER_ENVIRONMENT`` (``/.singularity.d/env/91-environment.sh``) and ``APPTAINER_LABELS``,
   copies of the host's ``/etc/resolv.conf`` and ``/etc/hosts`` bound in; ``%post -c /bin/bash``
   picks another shell;
5. the metadata: ``/.singularity.d/env/90-environment.sh`` (%environment), ``runscript`` and
   ``test`` (``#!/bin/sh`` unless the section has its own ``#!``), ``labels.json``,
   ``runscript.help`` (%help), ``Singularity`` (the definition);
6. **%test**, as ``apptainer test`` runs it.

What it is not (say so wherever it is used): no SIF file is made (the result is a sandbox
directory); it needs real root (no user namespace, no ``--fakeroot``); there is no overlay or
squashfs. Each section and each run executes in a chroot inside private mount and PID namespaces
(``unshare``): ``/proc`` is mounted fresh, ``/sys`` and ``/dev`` are the host's, and when the
section ends its mounts vanish and the processes it left behind are killed, as when Apptainer's
container exits. Runs see the root read-only (a SIF is read-only) with fresh tmpfs ``/tmp``,
``/var/tmp`` and ``$HOME`` and only the binds asked for (``--contain``), in a clean environment
(``--cleanenv``; Apptainer's ``apptainer test`` during a build passes the host's). Multi-stage
definitions, ``%app*``, ``%startscript`` and every other bootstrap agent are refused.

One adaptation to the build host, outside the definition's semantics: ``build_ca`` offers a CA
bundle to %post (``PIP_CERT``, ``SSL_CERT_FILE``, ... point at ``/.build-ca.crt``) for machines
whose HTTPS goes through a proxy with its own CA; it is removed after %post and is not part of
the image.

``RootfsCache`` keeps built roots keyed by everything that decides their content and reuses
them (see its docstring for what the key covers and what it cannot see).
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field, replace
from functools import lru_cache
from enum import Enum
from pathlib import Path
from typing import Callable, Sequence

from .errors import HarnessError

__all__ = ["Agent", "SectionKind", "Section", "FileCopy", "Definition", "DefinitionError",
           "BuildError", "BuildOptions", "BuildReport", "Action", "Bind", "RootfsCache",
           "parse_definition", "build_sandbox", "run_action", "parse_bind", "default_cache_dir",
           "context_files", "debootstrap_args", "EMULATION"]

#: bump when the emulation changes what a build puts into a root: cached roots then rebuild
EMULATION = "colnn-apptainer-emulation/1"
#: how Apptainer names itself in the labels it adds; ours says what really built the root
EMULATION_LABEL = "org.colnn.build.emulated-by"
#: the PATH Apptainer gives a container with a clean environment
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: the packages Apptainer's debootstrap agent leaves out of a minbase root
DEBOOTSTRAP_EXCLUDE = "openssl,udev,debconf-i18n,e2fsprogs"
#: lines of a failed section's output that go into the error message
TAIL_LINES = 25
ENV_FILE = "/.singularity.d/env/90-environment.sh"
POST_ENV_FILE = "/.singularity.d/env/91-environment.sh"
LABELS_FILE = "/.build.labels"
BUILD_CA = "/.build-ca.crt"


class Agent(str, Enum):
    """The bootstrap agents this module emulates (Apptainer has many more)."""
    DEBOOTSTRAP = "debootstrap"


class SectionKind(str, Enum):
    """The sections of a single-stage definition this module understands."""
    SETUP = "setup"
    FILES = "files"
    POST = "post"
    ENVIRONMENT = "environment"
    RUNSCRIPT = "runscript"
    TEST = "test"
    LABELS = "labels"
    HELP = "help"


#: header keys of the debootstrap agent (lower case: Apptainer reads them case-insensitively)
DEBOOTSTRAP_KEYS = {"bootstrap": "Bootstrap", "osversion": "OSVersion", "mirrorurl": "MirrorURL",
                    "include": "Include", "stage": "Stage"}
#: Apptainer sections this emulation does not implement (an error, not silently ignored)
UNSUPPORTED_SECTIONS = ("startscript", "pre", "app")


class DefinitionError(HarnessError):
    """A definition file this emulation cannot build: malformed, or asking for what it lacks."""


class BuildError(HarnessError):
    """A build step failed; the message names the definition, the section, the exit status and
    ends with the last lines of the section's output."""

    def __init__(self, definition: Path, section: str, message: str, tail: Sequence[str] = (),
                 log: Path | None = None) -> None:
        self.definition = definition
        self.section = section
        self.tail = list(tail)
        self.log = log
        text = f"{definition}: {section} failed: {message}"
        if log is not None:
            text += f" (full output: {log})"
        if self.tail:
            text += "; its last lines:\n" + "\n".join(f"    {line}" for line in self.tail)
        super().__init__(text)


@dataclass(frozen=True)
class Section:
    """One ``%name [args]`` section: the text after the name on its line and its body."""
    kind: SectionKind
    args: str
    body: str
    line: int


@dataclass(frozen=True)
class FileCopy:
    """One line of %files: ``src`` on the host (relative to the context), ``dst`` in the root
    ("" = ``src``'s own path)."""
    src: str
    dst: str
    line: int


@dataclass(frozen=True)
class Definition:
    path: Path
    text: str
    #: lower-case key -> (value, line)
    header: dict[str, tuple[str, int]]
    sections: tuple[Section, ...]

    @property
    def agent(self) -> Agent:
        return Agent(self.header["bootstrap"][0])

    @property
    def os_version(self) -> str:
        return self.header["osversion"][0]

    @property
    def mirror_url(self) -> str:
        return self.header["mirrorurl"][0]

    @property
    def include(self) -> list[str]:
        """Include: packages separated by spaces or commas."""
        value = self.header.get("include", ("", 0))[0]
        return [p for p in re.split(r"[\s,]+", value) if p]

    def section(self, kind: SectionKind) -> Section | None:
        """The section of that kind; several of one kind are appended to one another, as
        Apptainer does (the first one's arguments count)."""
        found = [s for s in self.sections if s.kind == kind]
        if not found:
            return None
        return Section(kind, found[0].args, "\n".join(s.body for s in found), found[0].line)

    def files(self) -> list[FileCopy]:
        files = [s for s in self.sections if s.kind == SectionKind.FILES]
        out: list[FileCopy] = []
        for sec in files:
            if sec.args.strip():
                raise DefinitionError(f"{self.path}:{sec.line}: %files {sec.args.strip()}: "
                                      f"copying from another stage needs a multi-stage build, "
                                      f"which this emulation does not do")
            for k, raw in enumerate(sec.body.splitlines(), start=sec.line + 1):
                words = raw.split("#", 1)[0].split()     # Apptainer drops trailing comments too
                if not words:
                    continue
                if len(words) > 2:
                    raise DefinitionError(f"{self.path}:{k}: %files: 'src [dest]' expected, "
                                          f"got {raw.strip()!r}")
                out.append(FileCopy(words[0], words[1] if len(words) == 2 else "", k))
        return out

    def labels(self) -> dict[str, str]:
        sec = self.section(SectionKind.LABELS)
        out: dict[str, str] = {}
        for raw in (sec.body.splitlines() if sec else []):
            line = raw.strip()
            if line and not line.startswith("#"):
                name, _, value = line.partition(" ")
                out[name] = value.strip()
        return out


_SECTION_LINE = re.compile(r"^\s*%([A-Za-z]+)(?:\s+(.*))?\s*$")
_HEADER_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*)\s*:\s*(.*?)\s*$")


def parse_definition(path: str | os.PathLike[str]) -> Definition:
    """Read and check a definition for this emulation; every error names the file, the line
    where there is one, and the key or section."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError(f"{path}: cannot read the definition: {exc}") from None
    header: dict[str, tuple[str, int]] = {}
    sections: list[Section] = []
    current: tuple[SectionKind, str, int] | None = None
    body: list[str] = []

    def close() -> None:
        if current is not None:
            kind, args, line = current
            sections.append(Section(kind, args, "\n".join(body).strip("\n").rstrip(), line))

    for n, raw in enumerate(text.splitlines(), start=1):
        m = _SECTION_LINE.match(raw)
        if m:
            name = m.group(1).lower()
            if name.startswith(UNSUPPORTED_SECTIONS):
                raise DefinitionError(f"{path}:{n}: %{m.group(1)} is not supported by this "
                                      f"emulation of apptainer build (build it with apptainer)")
            try:
                kind = SectionKind(name)
            except ValueError:
                raise DefinitionError(
                    f"{path}:{n}: unknown section %{m.group(1)} (known: "
                    + ", ".join("%" + k.value for k in SectionKind) + ")") from None
            close()
            current, body = (kind, (m.group(2) or "").strip(), n), []
            continue
        if current is not None:
            if re.match(r"^Bootstrap\s*:", raw, re.I):
                raise DefinitionError(f"{path}:{n}: a second Bootstrap: starts another stage; "
                                      f"multi-stage definitions are not emulated")
            body.append(raw)
            continue
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        hm = _HEADER_LINE.match(line)
        if not hm:
            raise DefinitionError(f"{path}:{n}: neither a header line ('Key: value') nor a "
                                  f"%section: {line!r}")
        key, value = hm.group(1).lower(), hm.group(2)
        if not header and key != "bootstrap":
            raise DefinitionError(f"{path}:{n}: the header must start with Bootstrap: "
                                  f"(found {hm.group(1)}:)")
        if key in header:
            raise DefinitionError(f"{path}:{n}: header key {hm.group(1)} given twice "
                                  f"(first on line {header[key][1]})")
        header[key] = (value, n)
    close()
    if "bootstrap" not in header:
        raise DefinitionError(f"{path}: no header: the definition must start with "
                              f"'Bootstrap: debootstrap'")
    agent, line = header["bootstrap"]
    if agent not in {a.value for a in Agent}:
        raise DefinitionError(f"{path}:{line}: Bootstrap: {agent}: only the debootstrap agent "
                              f"is emulated (build this definition with apptainer)")
    for key, (_, n) in header.items():
        if key not in DEBOOTSTRAP_KEYS:
            raise DefinitionError(f"{path}:{n}: header key {key!r} is not one the debootstrap "
                                  f"agent takes ({', '.join(DEBOOTSTRAP_KEYS.values())})")
    for key in ("osversion", "mirrorurl"):
        if not header.get(key, ("", 0))[0]:
            raise DefinitionError(f"{path}: the debootstrap agent needs the header key "
                                  f"{DEBOOTSTRAP_KEYS[key]} (e.g. "
                                  + ("OSVersion: bookworm" if key == "osversion" else
                                     "MirrorURL: http://deb.debian.org/debian") + ")")
    definition = Definition(path, text, header, tuple(sections))
    definition.files()          # checks the %files lines now, not halfway through a build
    return definition


# ---------------------------------------------------------------------------------------------
# running things: logged subprocesses, the namespaces, paths inside the root

def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise HarnessError(f"{what} needs root (debootstrap, mounts and chroot; Apptainer's "
                           f"debootstrap agent needs root too)")


def _tool(name: str, hint: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not found:
        raise HarnessError(f"{name} not found: {hint}")
    return found


def _run_logged(cmd: Sequence[str], log: Path, echo: bool, *, cwd: Path | None = None,
                env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run `cmd` with stdout and stderr merged, appended to `log` (and to our stdout when
    `echo`); returns the exit status and the last TAIL_LINES lines."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with open(log, "ab") as out:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, env=env)
        assert proc.stdout is not None
        for raw in proc.stdout:
            out.write(raw)
            line = raw.decode(errors="replace").rstrip("\n")
            tail.append(line)
            if echo:
                print(line, flush=True)
        return proc.wait(), list(tail)


def _inside(root: Path, path: str) -> Path:
    """`path` of the container as a host path under `root`, with symbolic links resolved
    inside the root (an absolute link such as /etc/foo -> /usr/x must not reach the host's
    /usr): the secure join Apptainer does for %files destinations."""
    parts = [p for p in posixpath.normpath("/" + path).split("/") if p]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            resolved = resolved[:-1]
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise HarnessError(f"{path}: too many symbolic links inside {root}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


@dataclass(frozen=True)
class Bind:
    """A host directory or file mounted at ``dst`` in the container (``--bind src:dst[:ro]``)."""
    src: Path
    dst: str
    read_only: bool = False


def parse_bind(spec: str) -> Bind:
    """``SRC[:DST[:ro|rw]]`` as Apptainer's --bind takes it (DST defaults to SRC)."""
    parts = spec.split(":")
    if not parts[0] or len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise HarnessError(f"--bind {spec}: SRC[:DST[:ro|rw]] expected")
    src = Path(parts[0]).resolve()
    dst = parts[1] if len(parts) > 1 and parts[1] else str(src)
    if not src.exists():
        raise HarnessError(f"--bind {spec}: {src} does not exist")
    if not dst.startswith("/"):
        raise HarnessError(f"--bind {spec}: the destination must be an absolute path")
    return Bind(src, posixpath.normpath(dst), len(parts) == 3 and parts[2] == "ro")


def _stage_host_file(src: str, staging: Path) -> Path | None:
    """A copy of a host file (resolv.conf, hosts) to bind into the root: Apptainer binds
    copies, so that a package's postinst writing /etc/hosts cannot change the host's. The extra
    newline is Apptainer's too (yum leaves a file it sees as modified alone)."""
    try:
        data = Path(src).read_bytes()
    except OSError:
        return None
    staged = staging / Path(src).name
    staged.write_bytes(data + b"\n")
    return staged


def _ensure_regular_file(path: Path) -> None:
    """A bind target must be a file of the root's own: a symlink would be followed on the host
    side of the mount."""
    if path.is_symlink() or path.is_dir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def _namespaced(root: Path, mounts: Sequence[str], argv: Sequence[str]) -> list[str]:
    """The command that runs `argv` chrooted into `root` after `mounts` (shell lines), in new
    mount and PID namespaces: the mounts exist only there and vanish with it, even when this
    process is killed (unshare --kill-child), and whatever the command left running is killed
    when it exits; nothing needs unmounting afterwards."""
    chroot = _tool("chroot", "install coreutils")
    script = "\n".join(["set -e", *mounts, "exec " + shlex.join([chroot, str(root), *argv])])
    unshare = _tool("unshare", "install util-linux")
    return [unshare, "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
            "/bin/sh", "-c", script]


def _system_mounts(root: Path, staging: Path) -> list[str]:
    q = shlex.quote
    lines = [f"mount -t proc proc {q(str(root / 'proc'))}",
             f"mount --rbind /sys {q(str(root / 'sys'))}",
             f"mount --rbind /dev {q(str(root / 'dev'))}"]
    for name in ("/etc/resolv.conf", "/etc/hosts"):
        staged = _stage_host_file(name, staging)
        target = root / name.lstrip("/")
        if staged is not None and target.is_file() and not target.is_symlink():
            lines.append(f"mount --bind {q(str(staged))} {q(str(target))}")
    return lines


def _container_env(root: Path, command: str, extra: dict[str, str] | None = None) -> list[str]:
    """``env -i`` and what Apptainer's --cleanenv keeps or sets."""
    env = {"PATH": DEFAULT_PATH, "HOME": "/root", "LANG": "C", "TERM": "dumb",
           "APPTAINER_COMMAND": command, "APPTAINER_CONTAINER": str(root),
           "APPTAINER_NAME": root.name, "APPTAINER_ENVIRONMENT": POST_ENV_FILE,
           "SINGULARITY_ENVIRONMENT": POST_ENV_FILE, **(extra or {})}
    return ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items())]


# ---------------------------------------------------------------------------------------------
# runs: apptainer run / exec / test --contain --cleanenv, on a read-only root

class Action(str, Enum):
    RUN = "run"
    EXEC = "exec"
    TEST = "test"


#: the directories a contained run gets as fresh tmpfs (writable, empty, gone afterwards)
_SCRATCH = ("/tmp", "/var/tmp", "/root")


def _action_command(root: Path, action: Action, args: Sequence[str], binds: Sequence[Bind],
                    pwd: str, staging: Path) -> list[str]:
    q = shlex.quote
    for name in ("/.singularity.d", "/usr/bin/env", "/bin/sh"):
        if not (root / name.lstrip("/")).exists():
            raise HarnessError(f"{root}: not a sandbox made by harness image build "
                               f"({name} missing)")
    if action == Action.TEST and not (root / ".singularity.d/test").is_file():
        raise HarnessError(f"{root}: the image has no %test")
    # read-only, as a SIF is: a run cannot change the (cached) root
    mounts = [f"mount --bind {q(str(root))} {q(str(root))}",
              f"mount -o remount,bind,ro {q(str(root))}"]
    mounts += _system_mounts(root, staging)
    mounts += [f"mount -t tmpfs -o mode={'0700' if d == '/root' else '1777'} tmpfs "
               f"{q(str(root / d.lstrip('/')))}" for d in _SCRATCH]
    for bind in binds:
        under_scratch = any(bind.dst == d or bind.dst.startswith(d + "/") for d in _SCRATCH)
        target = _inside(root, bind.dst)
        if not under_scratch and not target.exists():
            raise HarnessError(f"--bind {bind.src}:{bind.dst}: {bind.dst} does not exist in the "
                               f"image, which is read-only (bind to an existing directory such "
                               f"as /mnt, or under /tmp)")
        if under_scratch:
            make = "mkdir -p" if bind.src.is_dir() else "touch"
            if not bind.src.is_dir():
                mounts.append(f"mkdir -p {q(str(target.parent))}")
            mounts.append(f"{make} {q(str(target))}")
        mounts.append(f"mount --bind {q(str(bind.src))} {q(str(target))}")
        if bind.read_only:
            mounts.append(f"mount -o remount,bind,ro {q(str(target))}")
    # what Apptainer's action scripts do: the image's environment files in order, then the
    # runscript, the command, or the test script
    launch = ("for f in /.singularity.d/env/*.sh; do [ -r \"$f\" ] && . \"$f\"; done; "
              f"cd {q(pwd)} && ")
    launch += {Action.RUN: 'exec /.singularity.d/runscript "$@"',
               Action.EXEC: 'exec "$@"',
               Action.TEST: 'exec /.singularity.d/test "$@"'}[action]
    argv = [*_container_env(root, action.value), "/bin/sh", "-c", launch, action.value, *args]
    return _namespaced(root, mounts, argv)


def run_action(root: str | os.PathLike[str], action: Action, args: Sequence[str] = (),
               binds: Sequence[Bind] = (), pwd: str = "/", capture: bool = False,
               timeout: float | None = None) -> subprocess.CompletedProcess:
    """``apptainer <action> --contain --cleanenv [--bind ...] [--pwd PWD] ROOT ARGS``, emulated:
    the image's environment files, then its runscript (run), ARGS as a command (exec) or its
    test script (test). Returns the finished process (output captured when `capture`)."""
    _require_root(f"harness image {action.value}")
    root = Path(root).resolve()
    if action == Action.EXEC and not args:
        raise HarnessError("harness image exec: give the command to run")
    with tempfile.TemporaryDirectory(prefix="colnn-image-run-") as staging:
        cmd = _action_command(root, action, args, binds, pwd, Path(staging))
        return subprocess.run(cmd, capture_output=capture, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------------
# the build

@dataclass
class BuildOptions:
    #: the build's working directory: where %setup runs and %files sources are looked up
    context: Path = field(default_factory=Path.cwd)
    #: run %test at the end, as apptainer build does unless --notest
    run_test: bool = True
    #: a CA bundle for %post's downloads (see the module docstring), or None
    build_ca: Path | None = None
    #: print every section's output while it runs (it always goes to the log)
    echo: bool = False
    #: where debootstrap results are kept for reuse (keyed by the header), or None
    base_cache: Path | None = None
    #: a cached debootstrap result older than this is made again
    max_age_days: float = 7.0


@dataclass
class BuildReport:
    root: Path
    log: Path
    #: seconds per step (bootstrap, %setup, %files, %post, metadata, %test)
    steps: dict[str, float]
    #: the cache key when the root came from or went into a RootfsCache
    key: str = ""
    cached: bool = False
    base_reused: bool = False

    def summary(self) -> str:
        how = "cached root reused" if self.cached else "built " + ", ".join(
            f"{k} {v:.0f} s" for k, v in self.steps.items())
        return f"{self.root}: {how}" + (" (debootstrap result reused)" if self.base_reused
                                         else "")


@lru_cache(maxsize=None)
def host_arch() -> str:
    """Debian's name of this machine's architecture (what Apptainer passes as --arch)."""
    try:
        return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        import platform
        return {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64el"}.get(
            platform.machine(), platform.machine())


def debootstrap_args(defn: Definition, root: Path, arch: str) -> list[str]:
    """debootstrap's arguments, those Apptainer's debootstrap agent passes: a minbase root
    without a few packages a container does not need, apt and the Include: packages added."""
    return ["--variant=minbase", f"--exclude={DEBOOTSTRAP_EXCLUDE}",
            "--include=" + ",".join(["apt", *defn.include]), f"--arch={arch}",
            defn.os_version, str(root), defn.mirror_url]


def _debootstrap_argv(defn: Definition, root: Path) -> list[str]:
    return [_tool("debootstrap", "apt-get install debootstrap"),
            *debootstrap_args(defn, root, host_arch())]


def _base_key(defn: Definition) -> str:
    version = subprocess.run([_tool("debootstrap", "apt-get install debootstrap"), "--version"],
                             capture_output=True, text=True).stdout.strip()
    parts = [EMULATION, version, host_arch(), defn.os_version, defn.mirror_url,
             ",".join(defn.include), DEBOOTSTRAP_EXCLUDE]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _fresh(path: Path, max_age_days: float) -> bool:
    return path.exists() and time.time() - path.stat().st_mtime < max_age_days * 86400


def _bootstrap(defn: Definition, root: Path, opts: BuildOptions, log: Path) -> bool:
    """debootstrap into `root`, or a copy of the cached result for the same header; True when
    the cache was used."""
    def debootstrap(into: Path) -> None:
        status, tail = _run_logged(_debootstrap_argv(defn, into), log, opts.echo)
        if status != 0:
            inner = into / "debootstrap" / "debootstrap.log"
            if inner.is_file():
                tail = inner.read_text(errors="replace").splitlines()[-TAIL_LINES:]
            raise BuildError(defn.path, "bootstrap (debootstrap)", f"exit status {status}",
                             tail, log)

    if opts.base_cache is None:
        debootstrap(root)
        return False
    opts.base_cache.mkdir(parents=True, exist_ok=True)
    base = opts.base_cache / f"base-{_base_key(defn)}"
    # a lock of its own (RootfsCache.build holds "lock" on the same directory): a build from
    # the command line and one from the tests may share the debootstrap results
    with open(opts.base_cache / "base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in opts.base_cache.glob("tmp-base-*"):
            _remove_tree(stale)          # a killed debootstrap's (nobody else holds the lock)
        reused = _fresh(base, opts.max_age_days)
        if not reused:
            tmp = Path(tempfile.mkdtemp(prefix="tmp-base-", dir=opts.base_cache))
            try:
                debootstrap(tmp)
                if base.exists():
                    _remove_tree(base)
                tmp.rename(base)
            finally:
                if tmp.exists():
                    _remove_tree(tmp)
        _prune(opts.base_cache, "base-", keep=2)
        proc = subprocess.run(["cp", "-a", "--reflink=auto", f"{base}/.", str(root)],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(defn.path, "bootstrap (copy of the cached debootstrap result)",
                         proc.stderr.strip(), log=log)
    return reused


def _section_argv(defn: Definition, sec: Section, script: str) -> list[str]:
    """``/bin/sh -ex [ARGS] SCRIPT``, or with ``-c SHELL ...`` in the section's arguments,
    ``/bin/sh -ex -c "SHELL ... SCRIPT"``: how Apptainer runs %setup, %post (documented:
    build-time sections take /bin/sh options)."""
    params = sec.args.split("#", 1)[0].split()
    if "-c" in params:
        i = params.index("-c")
        if i == len(params) - 1:
            raise DefinitionError(f"{defn.path}:{sec.line}: %{sec.kind.value} -c: give the shell "
                                  f"to run the section with")
        return ["/bin/sh", "-ex", *params[:i], "-c", " ".join([*params[i + 1:], script])]
    return ["/bin/sh", "-ex", *params, script]


def _make_singularity_dir(root: Path) -> None:
    """What Apptainer puts into every root before the sections run: the metadata directory,
    the file %post appends environment to, an empty runscript, the legacy links."""
    meta = root / ".singularity.d"
    for sub in ("env", "actions", "libs"):
        (meta / sub).mkdir(parents=True, exist_ok=True)
    (root / POST_ENV_FILE.lstrip("/")).touch()
    runscript = meta / "runscript"
    runscript.write_text("#!/bin/sh\n")
    runscript.chmod(0o755)
    for link, target in (("singularity", ".singularity.d/runscript"),
                         ("environment", ".singularity.d/env/90-environment.sh")):
        if not (root / link).is_symlink() and not (root / link).exists():
            (root / link).symlink_to(target)


def _run_setup(defn: Definition, root: Path, opts: BuildOptions, log: Path) -> None:
    sec = defn.section(SectionKind.SETUP)
    if sec is None or not sec.body.strip():
        return
    with tempfile.TemporaryDirectory(prefix="colnn-setup-") as tmp:
        script = Path(tmp) / "setup"
        script.write_text(sec.body + "\n")
        script.chmod(0o755)
        env = dict(os.environ, APPTAINER_ROOTFS=str(root), SINGULARITY_ROOTFS=str(root),
                   APPTAINER_ENVIRONMENT=POST_ENV_FILE, SINGULARITY_ENVIRONMENT=POST_ENV_FILE)
        status, tail = _run_logged(_section_argv(defn, sec, str(script)), log, opts.echo,
                                   cwd=opts.context, env=env)
    if status != 0:
        raise BuildError(defn.path, "%setup", f"exit status {status}", tail, log)


def _expand(copy: FileCopy, defn: Definition, context: Path) -> list[Path]:
    pattern = copy.src if os.path.isabs(copy.src) else str(context / copy.src)
    matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else (
        [pattern] if os.path.lexists(pattern) else [])
    if not matches:
        raise BuildError(defn.path, "%files", f"line {copy.line}: {copy.src} matches nothing "
                         f"(relative sources are looked up in {context})")
    return [Path(m) for m in matches]


def _copy_files(defn: Definition, root: Path, opts: BuildOptions, log: Path) -> None:
    for copy in defn.files():
        for src in _expand(copy, defn, opts.context):
            # "" = the source's own path in the container (a relative one taken from the
            # context; _inside keeps a "../" from leaving the root)
            rel = copy.dst or (str(src) if os.path.isabs(copy.src)
                               else "/" + os.path.relpath(src, opts.context))
            dst = _inside(root, rel)
            if rel.endswith("/"):
                dst.mkdir(parents=True, exist_ok=True)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run(["cp", "-fLr", str(src), str(dst)], capture_output=True,
                                  text=True)
            with open(log, "a") as out:
                out.write(f"%files: {src} -> {rel} ({dst})\n{proc.stderr}")
            if proc.returncode != 0:
                raise BuildError(defn.path, "%files", f"line {copy.line}: copying {src} to "
                                 f"{rel}: {proc.stderr.strip()}", log=log)


def _run_post(defn: Definition, root: Path, opts: BuildOptions, log: Path) -> None:
    sec = defn.section(SectionKind.POST)
    if sec is None or not sec.body.strip():
        return
    script = root / ".post.script"
    script.write_text(sec.body + "\n")
    script.chmod(0o755)
    for name in ("etc/resolv.conf", "etc/hosts"):
        _ensure_regular_file(root / name)
    extra = {"APPTAINER_LABELS": LABELS_FILE, "SINGULARITY_LABELS": LABELS_FILE}
    ca_target = root / BUILD_CA.lstrip("/")
    try:
        with tempfile.TemporaryDirectory(prefix="colnn-post-") as staging:
            mounts = _system_mounts(root, Path(staging))
            if opts.build_ca is not None:
                ca_target.touch()
                mounts.append(f"mount --bind {shlex.quote(str(opts.build_ca))} "
                              f"{shlex.quote(str(ca_target))}")
                extra.update({k: BUILD_CA for k in ("PIP_CERT", "SSL_CERT_FILE",
                                                    "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                                                    "GIT_SSL_CAINFO")})
            argv = [*_container_env(root, "exec", extra), "/bin/sh", "-c", "cd / && exec \"$@\"",
                    "post", *_section_argv(defn, sec, "/.post.script")]
            status, tail = _run_logged(_namespaced(root, mounts, argv), log, opts.echo)
    finally:
        script.unlink(missing_ok=True)
        if ca_target.exists() and not ca_target.is_symlink():
            ca_target.unlink()
    if status != 0:
        raise BuildError(defn.path, "%post", f"exit status {status}", tail, log)


def _shebang_script(sec: Section) -> str:
    """A runscript or test file: the section's own ``#!`` line or ``#!/bin/sh``, the section's
    arguments appended to it, as Apptainer writes them."""
    body = sec.body
    shebang = "#!/bin/sh"
    if body.lstrip().startswith("#!"):
        first, _, body = body.lstrip().partition("\n")
        shebang = first.strip()
    args = sec.args.split("#", 1)[0].strip()
    return (shebang + (" " + args if args else "")) + "\n\n" + body + "\n"


def _write_metadata(defn: Definition, root: Path) -> None:
    meta = root / ".singularity.d"
    env = defn.section(SectionKind.ENVIRONMENT)
    if env is not None and env.body.strip():
        (root / ENV_FILE.lstrip("/")).write_text("#!/bin/sh\n\n" + env.body + "\n")
        (root / ENV_FILE.lstrip("/")).chmod(0o755)
    for kind, name in ((SectionKind.RUNSCRIPT, "runscript"), (SectionKind.TEST, "test")):
        sec = defn.section(kind)
        if sec is not None and sec.body.strip():
            (meta / name).write_text(_shebang_script(sec))
            (meta / name).chmod(0o755)
    help_sec = defn.section(SectionKind.HELP)
    labels: dict[str, str] = {}
    # labels %post wrote to $APPTAINER_LABELS ("NAME VALUE" lines)
    build_labels = root / LABELS_FILE.lstrip("/")
    if build_labels.is_file():
        for raw in build_labels.read_text(errors="replace").splitlines():
            name, _, value = raw.strip().partition(" ")
            if name:
                labels[name] = value.strip()
        build_labels.unlink()
    stamp = time.strftime("%A_%d_%B_%Y_%H:%M:%S_%Z")
    labels.update({"org.label-schema.schema-version": "1.0",
                   "org.label-schema.build-date": stamp,
                   "org.label-schema.build-arch": host_arch(),
                   EMULATION_LABEL: f"harness image build ({EMULATION}): an emulation of "
                                    f"apptainer build, not Apptainer itself"})
    labels.update({f"org.label-schema.usage.singularity.deffile.{k}": v
                   for k, (v, _) in defn.header.items()})
    if help_sec is not None and help_sec.body.strip():
        (meta / "runscript.help").write_text(help_sec.body + "\n")
        labels["org.label-schema.usage"] = "/.singularity.d/runscript.help"
    labels.update(defn.labels())
    (meta / "labels.json").write_text(json.dumps(labels, indent="\t") + "\n")
    (meta / "Singularity").write_text(defn.text)


def _remove_tree(path: Path) -> None:
    """Remove a root that was built or is being thrown away. Sections mount only inside their
    own namespaces, so nothing should be mounted below it here; if something is (a mount made
    by hand), refuse rather than delete through it into the host's /dev or /sys."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as info:
        for line in info:
            point = line.split()[4].replace("\\040", " ")
            if point == real or point.startswith(real + "/"):
                raise HarnessError(f"{point} is mounted inside {path}: unmount it first "
                                   f"(umount -R {shlex.quote(point)}); nothing was deleted")
    shutil.rmtree(path, ignore_errors=True)


def _steps_of(defn: Definition, root: Path, opts: BuildOptions, log: Path,
              steps: dict[str, float]) -> bool:
    """Bootstrap and every section into `root`, timing each step; True when the debootstrap
    result came from the base cache."""
    def timed(name: str, fn: Callable[..., object], *args: object) -> object:
        t0 = time.monotonic()
        result = fn(*args)
        steps[name] = round(time.monotonic() - t0, 1)
        return result

    reused = bool(timed("bootstrap", _bootstrap, defn, root, opts, log))
    root.chmod(0o755)
    _make_singularity_dir(root)
    timed("%setup", _run_setup, defn, root, opts, log)
    timed("%files", _copy_files, defn, root, opts, log)
    timed("%post", _run_post, defn, root, opts, log)
    timed("metadata", _write_metadata, defn, root)
    if opts.run_test and defn.section(SectionKind.TEST) is not None:
        def test() -> None:
            with tempfile.TemporaryDirectory(prefix="colnn-test-") as staging:
                cmd = _action_command(root, Action.TEST, (), (), "/", Path(staging))
                status, tail = _run_logged(cmd, log, opts.echo)
            if status != 0:
                raise BuildError(defn.path, "%test", f"exit status {status}", tail, log)
        timed("%test", test)
    return reused


def build_sandbox(defn: Definition, dest: str | os.PathLike[str],
                  opts: BuildOptions | None = None) -> BuildReport:
    """``apptainer build --sandbox DEST DEFINITION``, emulated (see the module docstring).
    The root is made in a temporary directory beside `dest` and renamed into place only when
    every step, %test included, succeeded; the output of all steps goes to DEST.build.log."""
    _require_root("harness image build")
    opts = replace(opts or BuildOptions())
    opts.context = opts.context.resolve()
    dest = Path(dest).resolve()
    if dest.exists():
        raise HarnessError(f"{dest} exists: remove it or choose another directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    log = dest.parent / f"{dest.name}.build.log"
    log.write_text(f"harness image build {defn.path} -> {dest} ({EMULATION})\n")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    steps: dict[str, float] = {}
    old_umask = os.umask(0o022)        # Apptainer builds with 022: files readable by all users
    try:
        reused = _steps_of(defn, tmp, opts, log, steps)
        tmp.rename(dest)
    finally:
        os.umask(old_umask)
        if tmp.exists():
            _remove_tree(tmp)
    return BuildReport(dest, log, steps, base_reused=reused)


# ---------------------------------------------------------------------------------------------
# the cache of built roots

def default_cache_dir() -> Path:
    """$COLNN_ROOTFS_CACHE, else /var/cache/colnn-rootfs (outside any clone: a root is
    gigabytes and must survive a fresh checkout)."""
    return Path(os.environ.get("COLNN_ROOTFS_CACHE") or "/var/cache/colnn-rootfs")


def context_files(context: Path) -> list[Path]:
    """The files of the build context that a %setup may copy: the git-tracked ones (in their
    working-tree state) in a git checkout, else every file under it."""
    proc = subprocess.run(["git", "-C", str(context), "ls-files", "-z"], capture_output=True)
    if proc.returncode == 0:
        names = [n for n in proc.stdout.decode().split("\0") if n]
        return [context / n for n in names if os.path.lexists(context / n)]
    return sorted(Path(d) / f for d, _, fs in os.walk(context) for f in fs)


def _hash_path(h: "hashlib._Hash", path: Path, name: str) -> None:
    """Name, kind, executable bit and content (symbolic links by their target, as they are
    copied: %setup's tar keeps them; %files' cp -L follows them, see _hash_followed)."""
    if path.is_symlink():
        h.update(f"L {name} {os.readlink(path)}\n".encode())
        return
    if path.is_dir():                    # a submodule: git ls-files names its directory only
        h.update(f"D {name}\n".encode())
        return
    st = path.stat()
    h.update(f"F {name} {st.st_mode & 0o111:o} {st.st_size}\n".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def _hash_followed(h: "hashlib._Hash", path: Path, name: str) -> None:
    if path.is_dir():
        h.update(f"D {name}\n".encode())
        for child in sorted(path.iterdir()):
            _hash_followed(h, child.resolve() if child.is_symlink() else child,
                           f"{name}/{child.name}")
    else:
        _hash_path(h, path.resolve(), name)


@dataclass
class RootfsCache:
    """Built roots, kept under `directory` by a key over everything that decides their content:

    * the emulation's version, the definition file, this machine's architecture;
    * every file %files copies (what the globs match, symbolic links followed as cp -L does);
    * with a %setup: the build context's git-tracked files (name, executable bit, content of
      the working tree), which is what containers/colnn-debian.def's %setup copies; so any
      change to scripts/setup.sh, pyproject.toml, the Fortran sources or anything else tracked
      makes a new root.

    What the key cannot see: what %post downloads (Debian and PyPI change under a fixed
    definition; roots older than `max_age_days` are rebuilt), and a %setup that reads files
    that are not tracked or lie outside the context (do not cache such a definition).
    A hit is a root that was completely built, %test included (it is renamed into the cache
    only then); runs see it read-only, so using it does not change it. At most `keep` roots
    are kept, the least recently used go first; an exclusive lock on the directory serialises
    builds.
    """
    directory: Path
    keep: int = 2
    max_age_days: float = 7.0

    def key(self, defn: Definition, context: Path) -> tuple[str, dict[str, object]]:
        h = hashlib.sha256()
        h.update(f"{EMULATION}\n{host_arch()}\n".encode())
        h.update(defn.text.encode())
        inputs: dict[str, object] = {"definition": str(defn.path)}
        copied = 0
        for copy in defn.files():
            for src in _expand(copy, defn, context):
                _hash_followed(h, src, f"files:{copy.src}:{src}")
                copied += 1
        inputs["files_sources"] = copied
        if defn.section(SectionKind.SETUP) is not None:
            files = context_files(context)
            for path in files:
                _hash_path(h, path, str(path.relative_to(context)))
            inputs["context"] = str(context)
            inputs["context_files"] = len(files)
        return h.hexdigest()[:24], inputs

    def _root(self, key: str) -> Path:
        return self.directory / f"root-{key}"

    def lookup(self, key: str) -> Path | None:
        root = self._root(key)
        manifest = root.with_suffix(".json")
        if root.is_dir() and manifest.is_file() and _fresh(manifest, self.max_age_days):
            os.utime(root)               # least recently used goes first
            return root
        return None

    def build(self, defn: Definition, opts: BuildOptions) -> BuildReport:
        """The cached root for `defn` built in `opts.context`, built now when there is none."""
        _require_root("harness image build")
        opts = replace(opts, context=opts.context.resolve(),
                       base_cache=opts.base_cache or self.directory,
                       max_age_days=self.max_age_days)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "logs").mkdir(exist_ok=True)
        with open(self.directory / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            key, inputs = self.key(defn, opts.context)
            log = self.directory / "logs" / f"root-{key}.log"
            hit = self.lookup(key)
            if hit is not None:
                meta = json.loads(hit.with_suffix(".json").read_text())
                return BuildReport(hit, log, meta.get("steps", {}), key, cached=True)
            self._clear_leftovers()
            log.write_text(f"harness image build {defn.path} ({EMULATION}), key {key}\n")
            tmp = Path(tempfile.mkdtemp(prefix="tmp-root-", dir=self.directory))
            steps: dict[str, float] = {}
            old_umask = os.umask(0o022)
            try:
                reused = _steps_of(defn, tmp, opts, log, steps)
                root = self._root(key)
                if root.exists():
                    _remove_tree(root)
                root.with_suffix(".json").write_text(json.dumps(
                    {"key": key, "inputs": inputs, "steps": steps,
                     "built": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "base_reused": reused}, indent=2) + "\n")
                tmp.rename(root)         # atomic: a root is either complete or absent
            finally:
                os.umask(old_umask)
                if tmp.exists():
                    _remove_tree(tmp)
            _prune(self.directory, "root-", self.keep)
            return BuildReport(root, log, steps, key, cached=False, base_reused=reused)

    def _clear_leftovers(self) -> None:
        """Temporary roots of builds that were killed (we hold the lock: nobody builds now)."""
        for tmp in self.directory.glob("tmp-root-*"):
            _remove_tree(tmp)


def _prune(directory: Path, prefix: str, keep: int) -> None:
    """Keep the `keep` most recently used entries named PREFIX*, with their manifests and logs."""
    entries = sorted((p for p in directory.glob(prefix + "*") if p.is_dir()),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        _remove_tree(old)
        old.with_suffix(".json").unlink(missing_ok=True)
        (directory / "logs" / f"{old.name}.log").unlink(missing_ok=True)


def build_command(defn_path: str, dest: str, context: str | None, notest: bool,
               build_ca: str | None, cache_dir: str | None, base_cache: bool,
               quiet: bool) -> int:
    """``harness image build``: print what it does, build, print where the sandbox is."""
    defn = parse_definition(defn_path)
    ca = Path(build_ca).resolve() if build_ca else None
    if ca is not None and not ca.is_file():
        raise HarnessError(f"--build-ca {build_ca}: no such file")
    opts = BuildOptions(context=Path(context) if context else Path.cwd(), run_test=not notest,
                        build_ca=ca, echo=not quiet,
                        base_cache=(Path(cache_dir) if cache_dir else default_cache_dir())
                        if base_cache else None)
    print(f"harness image build: emulating `apptainer build --sandbox {dest} {defn_path}` "
          f"(debootstrap, chroot; no SIF, no Apptainer)", file=sys.stderr, flush=True)
    report = build_sandbox(defn, dest, opts)
    print(report.summary())
    return 0
