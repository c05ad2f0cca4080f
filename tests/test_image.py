"""The Apptainer image from the README's own set-up (containers/colnn-debian.def), built and run
without Apptainer by `harness image`: an emulation of `apptainer build --sandbox` for the
debootstrap agent and of `apptainer run|exec|test --contain --cleanenv` (no SIF file, no user
namespace or overlay; debootstrap, then each section chrooted in private mount and PID
namespaces; see harness/image.py and containers/README.md).

Without root: the definition is the README's set-up and its scripts pass `sh -n` and
shellcheck; bad definitions are refused naming the file, line and key or section; the cache
key changes with what the image is made from (setup.sh, pyproject.toml, any tracked file, the
definition) and with nothing else.
As root with debootstrap (CI: .ci/run runs as root, scripts/setup.sh installs debootstrap): a
failing %setup or %post names its section and shows its last lines, leaving no root, mount or
process behind (cheap: the cached debootstrap result); then the image itself, taken from the
cache ($COLNN_ROOTFS_CACHE, default /var/cache/colnn-rootfs) or built when what it is made from
changed: its %test (`harness demo`), the tree it holds (the checkout's tracked files and what
setup.sh builds, nothing else from this machine) and a tiny study through its runscript on the
local executor, with only a scratch directory bound in.

Times on the 2-vCPU VM (shared with another job, nice 15): with an empty cache the file takes
4 min 16 s (debootstrap 27 s, paid by the failing-%setup test; the image 182 s: %post, i.e.
setup.sh, 170 s, %test 12 s; the tiny study 21 s); with the cached root 44 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.image import (BuildOptions, DefinitionError, RootfsCache, SectionKind,
                           debootstrap_args, default_cache_dir, parse_definition)
from test_study import TINY, toml_text

REPO = Path(__file__).resolve().parent.parent
DEFINITION = REPO / "containers/colnn-debian.def"
HEADER = "Bootstrap: debootstrap\nOSVersion: bookworm\nMirrorURL: http://deb.debian.org/debian\n"


def harness(*args: str, cwd: Path | None = None, timeout: float = 1800
            ) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout, env=env)


# ---------------------------------------------------------------------------------------------
# the definition, read

def test_definition_is_the_readme_setup() -> None:
    defn = parse_definition(DEFINITION)
    assert defn.agent.value == "debootstrap" and defn.os_version == "bookworm"
    assert defn.mirror_url == "http://deb.debian.org/debian"
    post = defn.section(SectionKind.POST)
    setup = defn.section(SectionKind.SETUP)
    assert post is not None and setup is not None
    # one set-up for the image and a bare machine: the project's own script, unchanged
    assert "bash /opt/colnn/scripts/setup.sh" in post.body
    assert "git -C \"$top\" ls-files" in setup.body and "$APPTAINER_ROOTFS/opt/colnn" in setup.body
    assert defn.files() == []            # the tree comes from %setup (tracked files only)
    env = defn.section(SectionKind.ENVIRONMENT)
    assert env is not None and "/opt/colnn/.venv/bin" in env.body
    runscript = defn.section(SectionKind.RUNSCRIPT)
    assert runscript is not None and 'exec harness "$@"' in runscript.body
    test = defn.section(SectionKind.TEST)
    assert test is not None and "harness demo" in test.body
    assert "org.opencontainers.image.title" in defn.labels()
    assert defn.section(SectionKind.HELP) is not None
    text = DEFINITION.read_text()
    for bad in ("/work/", "/tmp/", "/home/"):        # no paths of the machine it was written on
        assert bad not in text, bad


@pytest.mark.parametrize("kind", [SectionKind.SETUP, SectionKind.POST, SectionKind.ENVIRONMENT,
                                  SectionKind.RUNSCRIPT, SectionKind.TEST])
def test_definition_scripts_pass_sh_and_shellcheck(kind: SectionKind, tmp_path: Path) -> None:
    """Apptainer runs the build sections with /bin/sh -ex and writes the others as #!/bin/sh
    scripts: they must be POSIX sh (Debian's dash), not bash."""
    section = parse_definition(DEFINITION).section(kind)
    assert section is not None
    script = tmp_path / "s.sh"
    script.write_text(section.body + "\n")
    proc = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(["shellcheck", "-s", "sh", "-S", "warning", str(script)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("text, expected", [
    ("Bootstrap: docker\nFrom: debian:12\n", "bad.def:1: Bootstrap: docker: only the "
                                             "debootstrap agent is emulated"),
    ("Bootstrap: debootstrap\nMirrorURL: http://deb.debian.org/debian\n",
     "bad.def: the debootstrap agent needs the header key OSVersion"),
    ("Bootstrap: debootstrap\nOSVersion: bookworm\n",
     "bad.def: the debootstrap agent needs the header key MirrorURL"),
    (HEADER + "From: debian:12\n", "bad.def:4: header key 'from' is not one the debootstrap"),
    ("OSVersion: bookworm\nBootstrap: debootstrap\n", "bad.def:1: the header must start with "
                                                      "Bootstrap:"),
    (HEADER + "OSVersion: trixie\n", "bad.def:4: header key OSVersion given twice"),
    (HEADER + "%pots\n    true\n", "bad.def:4: unknown section %pots"),
    (HEADER + "%startscript\n    true\n", "bad.def:4: %startscript is not supported"),
    (HEADER + "%post\n    true\n" + HEADER, "bad.def:6: a second Bootstrap: starts another "
                                            "stage; multi-stage"),
    (HEADER + "%files\n    a b c\n", "bad.def:5: %files: 'src [dest]' expected"),
    (HEADER + "%files from build\n    /a /b\n", "bad.def:4: %files from build: copying from "
                                               "another stage"),
    (HEADER + "just words\n", "bad.def:4: neither a header line"),
])
def test_bad_definitions_name_the_file_line_and_key(text: str, expected: str,
                                                    tmp_path: Path) -> None:
    bad = tmp_path / "bad.def"
    bad.write_text(text)
    with pytest.raises(DefinitionError) as err:
        parse_definition(bad)
    assert expected in str(err.value)


def test_debootstrap_gets_apptainers_arguments(tmp_path: Path) -> None:
    """Include: (spaces or commas) goes to --include after apt, as Apptainer's agent does;
    header keys are case-insensitive."""
    (tmp_path / "i.def").write_text("bootstrap: debootstrap\nosversion: bookworm\n"
                                    "MIRRORURL: http://deb.debian.org/debian\n"
                                    "Include: git, make  pkg-config\n")
    defn = parse_definition(tmp_path / "i.def")
    assert debootstrap_args(defn, Path("/r"), "amd64") == [
        "--variant=minbase", "--exclude=openssl,udev,debconf-i18n,e2fsprogs",
        "--include=apt,git,make,pkg-config", "--arch=amd64", "bookworm", "/r",
        "http://deb.debian.org/debian"]


def test_bad_definition_on_the_command_line_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.def"
    bad.write_text("Bootstrap: docker\nFrom: debian:12\n")
    proc = harness("image", "build", str(bad), str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"harness: error: {bad}:1: Bootstrap: docker: only the debootstrap agent is emulated "
        f"(build this definition with apptainer)")
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# the cache key

def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_cache_key_follows_what_the_image_is_made_from(tmp_path: Path) -> None:
    """A cached root is reused only when nothing it is made from changed: the definition, and
    (its %setup copies them) every tracked file as it is in the working tree. Untracked and
    ignored files (a .venv, build/, studies/) are not copied, so they do not count."""
    repo = tmp_path / "repo"
    for name, text in (("scripts/setup.sh", "echo set up\n"), ("pyproject.toml", "[x]\n"),
                       ("fortran/src/a.f90", "end\n"), (".gitignore", "build/\n")):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    shutil.copy(DEFINITION, repo / "image.def")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    cache = RootfsCache(tmp_path / "cache")

    def key() -> str:
        return cache.key(parse_definition(repo / "image.def"), repo)[0]

    k0 = key()
    assert key() == k0
    (repo / "untracked.txt").write_text("not copied\n")
    (repo / "build").mkdir()
    (repo / "build" / "big.o").write_text("ignored\n")
    assert key() == k0
    for name in ("scripts/setup.sh", "pyproject.toml", "fortran/src/a.f90"):
        old = (repo / name).read_text()
        (repo / name).write_text(old + "# changed\n")       # an uncommitted edit counts
        assert key() != k0, name
        (repo / name).write_text(old)
        assert key() == k0, name
    (repo / "scripts/setup.sh").chmod(0o755)                # so does the executable bit
    assert key() != k0
    (repo / "scripts/setup.sh").chmod(0o644)
    _git(repo, "add", "untracked.txt")                      # now tracked: copied, counted
    assert key() != k0
    _git(repo, "rm", "-q", "--cached", "untracked.txt")
    assert key() == k0
    (repo / "image.def").write_text((repo / "image.def").read_text() + "# a comment\n")
    assert key() != k0


def test_cache_key_covers_files_sections(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a\n")
    (tmp_path / "elsewhere.txt").write_text("x\n")
    defn = tmp_path / "f.def"
    defn.write_text(HEADER + "%files\n    data /opt/data\n")
    cache = RootfsCache(tmp_path / "cache")
    k0 = cache.key(parse_definition(defn), tmp_path)[0]
    (tmp_path / "elsewhere.txt").write_text("y\n")          # not copied: same key
    assert cache.key(parse_definition(defn), tmp_path)[0] == k0
    (tmp_path / "data" / "a.txt").write_text("b\n")
    assert cache.key(parse_definition(defn), tmp_path)[0] != k0


# ---------------------------------------------------------------------------------------------
# builds: root and debootstrap

def _build_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "building the image needs root (debootstrap, mounts, chroot)"
    for tool, hint in (("debootstrap", "apt-get install debootstrap (scripts/setup.sh does)"),
                       ("unshare", "util-linux"), ("chroot", "coreutils")):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            return f"{tool} is not installed: {hint}"
    # inside a container without CAP_SYS_ADMIN (docker's default) there are no namespaces
    probe = subprocess.run(["unshare", "--mount", "--pid", "--fork", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"this machine allows no mount/PID namespaces: {probe.stderr.strip()}"
    return None


needs_build = pytest.mark.skipif(_build_skip_reason() is not None,
                                 reason=_build_skip_reason() or "")


def _host_ca_bundle() -> Path | None:
    """The CA bundle this machine's pip uses: where HTTPS goes through a proxy with its own CA
    (these VMs), pip inside %post needs it too (harness image build --build-ca)."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _mounted_under(path: Path) -> list[str]:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as info:
        return [line.split()[4] for line in info if line.split()[4].startswith(real)]


def _failing_build(tmp_path: Path, sections: str) -> tuple[subprocess.CompletedProcess, Path]:
    defn = tmp_path / "fails.def"
    defn.write_text(HEADER + sections)
    out = tmp_path / "out" / "sandbox"
    return harness("image", "build", "--quiet", "--cache-dir", str(default_cache_dir()),
                   str(defn), str(out), cwd=tmp_path, timeout=900), out


@needs_build
def test_failing_setup_names_the_section_and_its_last_lines(tmp_path: Path) -> None:
    proc, out = _failing_build(tmp_path, "%setup\n    echo \"copying the tree\"\n"
                                         "    echo \"no such tree\" >&2\n    exit 3\n"
                                         "%post\n    echo never\n")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = proc.stderr[proc.stderr.index("harness: error:"):]
    assert f"{tmp_path / 'fails.def'}: %setup failed: exit status 3" in message
    assert "copying the tree" in message and "no such tree" in message and "+ exit 3" in message
    assert f"full output: {out}.build.log" in message
    # nothing half-built is left: no sandbox, no partial directory, only the log
    assert sorted(p.name for p in out.parent.iterdir()) == ["sandbox.build.log"]


@needs_build
def test_failing_post_names_the_section_and_leaves_nothing_behind(tmp_path: Path) -> None:
    marker = f"colnn-post-leftover-{os.getpid()}"
    proc, out = _failing_build(tmp_path, "%post\n"
                                         f"    echo 'sleep 600' > /{marker}.sh\n"
                                         f"    sh /{marker}.sh &\n"
                                         # [x]yz: grep's own command line must not match
                                         "    for i in 1 2 3 4 5 6 7 8 9 10; do\n"
                                         f"        grep -lq '[{marker[0]}]{marker[1:]}' "
                                         "/proc/[0-9]*/cmdline && echo 'daemon running' "
                                         "&& break\n"
                                         "        sleep 0.5\n"
                                         "    done\n"
                                         "    echo \"the last words\" >&2\n"
                                         "    false\n"
                                         "    echo \"never printed\"\n")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = proc.stderr[proc.stderr.index("harness: error:"):]
    assert f"{tmp_path / 'fails.def'}: %post failed: exit status 1" in message
    assert "the last words" in message and "+ false" in message
    assert "never printed" not in message
    assert sorted(p.name for p in out.parent.iterdir()) == ["sandbox.build.log"]
    # the section's mounts and the process it left running went with its namespaces
    assert "daemon running" in message
    assert _mounted_under(tmp_path) == []
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1


SEMANTICS = """
%setup
    echo "setup ran in $(pwd)" > "$APPTAINER_ROOTFS/setup.txt"
%files
    data/a.txt /opt/
    data
    data/*.txt /opt/globbed/    # a comment, as Apptainer allows
%post -c /bin/bash
    [[ -n "$BASH_VERSION" ]] && echo "post ran under bash in $(pwd)"
    cat /setup.txt /opt/a.txt /data/a.txt
    echo "ca: $(cat "$PIP_CERT")"
    echo 'export FROM_POST="post value"' >> "$APPTAINER_ENVIRONMENT"
    echo "my.label set in post" >> "$APPTAINER_LABELS"
%environment
    export FROM_ENV=environment
%runscript
    echo "run: $FROM_ENV | $FROM_POST | $*"
    touch /opt/new 2>/dev/null || echo "the root is read-only"
%test
    test -f /opt/a.txt && echo "test ran"
%labels
    Author colnn tests
%help
    How to use it.
"""


@needs_build
def test_sections_follow_apptainers_semantics(tmp_path: Path) -> None:
    """%setup on the host in the build directory with $APPTAINER_ROOTFS; %files (into a
    directory, to the source's own path, a glob); %post -c /bin/bash inside, seeing both, appending to
    $APPTAINER_ENVIRONMENT and $APPTAINER_LABELS, with the --build-ca bundle; the runscript
    with its arguments and both environments, on a read-only root; binds; the metadata."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a from files\n")
    (tmp_path / "ca.pem").write_text("a CA bundle\n")
    (tmp_path / "s.def").write_text(HEADER + SEMANTICS)
    out = tmp_path / "sandbox"
    proc = harness("image", "build", "--quiet", "--cache-dir", str(default_cache_dir()),
                   "--build-ca", str(tmp_path / "ca.pem"), "s.def", str(out), cwd=tmp_path,
                   timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (tmp_path / "sandbox.build.log").read_text()
    for line in (f"setup ran in {tmp_path}", "post ran under bash in /", "a from files",
                 "ca: a CA bundle", "test ran"):
        assert line in log, line
    assert (out / "data/a.txt").is_file() and (out / "opt/globbed/a.txt").is_file()
    assert not (out / ".build-ca.crt").exists()
    proc = harness("image", "run", str(out), "one", "two words")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["run: environment | post value | one two words",
                                        "the root is read-only"]
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "in.txt").write_text("from the host\n")
    proc = harness("image", "exec", "--bind", f"{tmp_path / 'work'}:/mnt", "--pwd", "/mnt",
                   str(out), "sh", "-c", "cat in.txt && echo back > out.txt && ls /tmp | wc -l")
    assert proc.returncode == 0 and proc.stdout.split() == ["from", "the", "host", "0"]
    assert (tmp_path / "work" / "out.txt").read_text() == "back\n"
    proc = harness("image", "exec", "--bind", f"{tmp_path}:/nowhere", str(out), "true")
    assert proc.returncode == 2 and "/nowhere does not exist in the image" in proc.stderr
    labels = json.loads((out / ".singularity.d/labels.json").read_text())
    assert labels["Author"] == "colnn tests" and labels["my.label"] == "set in post"
    assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "debootstrap"
    assert "not Apptainer itself" in labels["org.colnn.build.emulated-by"]
    assert (out / ".singularity.d/runscript.help").read_text() == "    How to use it.\n"
    assert (out / ".singularity.d/Singularity").read_text() == HEADER + SEMANTICS
    assert (out / ".singularity.d/runscript").read_text().startswith("#!/bin/sh\n\n")


@pytest.fixture(scope="module")
def image() -> Path:
    """The image's root: from the cache when nothing it is made from changed, else built
    now (minutes). A build failure fails the tests with the section and its last lines."""
    reason = _build_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    t0 = time.monotonic()
    report = RootfsCache(default_cache_dir()).build(
        parse_definition(DEFINITION),
        BuildOptions(context=REPO, build_ca=_host_ca_bundle()))
    print(f"\n{report.summary()} in {time.monotonic() - t0:.0f} s", flush=True)
    return report.root


@needs_build
def test_image_test_section(image: Path) -> None:
    proc = harness("image", "test", str(image), timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "python stack ok" in proc.stdout
    assert "demo passed" in proc.stdout
    # the harness in the image uses the image's libraries, not this checkout's
    assert "/opt/colnn/build/single" in proc.stdout and str(REPO) not in proc.stdout


@needs_build
def test_image_holds_the_tracked_tree_and_what_setup_builds(image: Path) -> None:
    """The image's /opt/colnn is the checkout's tracked files plus what scripts/setup.sh made
    there (the venv, the two builds, the editable install's metadata, bytecode): nothing
    untracked or ignored from this machine (a .venv, build/, studies/)."""
    tracked = set(subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True,
                                 text=True, check=True).stdout.split())
    tracked = {name for name in tracked if (REPO / name).exists()}
    proc = harness("image", "exec", "--pwd", "/opt/colnn", str(image), "find", ".",
                   "(", "-path", "./.venv", "-o", "-path", "./build", "-o", "-name",
                   "__pycache__", "-o", "-name", "*.egg-info", ")", "-prune", "-o",
                   "(", "-type", "f", "-o", "-type", "l", ")", "-print")
    assert proc.returncode == 0, proc.stderr
    in_image = {line.removeprefix("./") for line in proc.stdout.split()}
    assert in_image == tracked, (sorted(in_image - tracked)[:20], sorted(tracked - in_image)[:20])
    for made in (".venv/bin/harness", "build/single/fortran/libcolnn.so",
                 "build/double/fortran/libcolnn.so"):
        assert (image / "opt/colnn" / made).exists(), made


@needs_build
def test_tiny_study_through_the_runscript(image: Path, tmp_path: Path) -> None:
    """`apptainer run --bind $PWD:/mnt --pwd /mnt colnn.sif study tiny.toml -o study`: the
    tests' tiny L96 study, every stage on the local executor, inside the image; the root
    stays read-only, the results land in the bound directory."""
    (tmp_path / "tiny.toml").write_text(toml_text(TINY))
    t0 = time.monotonic()
    proc = harness("image", "run", "--bind", f"{tmp_path}:/mnt", "--pwd", "/mnt", str(image),
                   "study", "tiny.toml", "-o", "study", "-q", timeout=1200)
    print(f"\ntiny study in the image: {time.monotonic() - t0:.0f} s")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    study = tmp_path / "study"
    table = pd.read_csv(study / "results/candidates.csv")
    candidates = table[table["kind"] == "candidate"]
    assert len(candidates) == TINY["training"]["candidates"], table
    assert (candidates["convert_status"] == "ok").all(), table
    assert candidates["steps_to_failure"].notna().all(), table       # coupled runs happened
    assert len(pd.read_csv(study / "results/runs.csv")) > 0
    assert (study / "report/report.md").is_file()
    # verified and coupled with the image's library, not this checkout's
    for verify in study.glob("candidates/*/convert.json"):
        library = json.loads(verify.read_text())["verify"]["library_path"]
        assert library.startswith("/opt/colnn/build/single/"), library
    assert not (image / "opt/colnn/studies").exists()
