"""Spack packaging, checked without downloading anything: the environment (spack.yaml) names
every spec the project needs and develops the project's own package from the tree; the package
recipe compiles, declares its variants and only passes CMake options the project defines. Where
`spack` is on PATH, the environment is also concretized."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "spack/repos/spack_repo/colnn/packages/colnn/package.py"
HARNESS_PACKAGE = REPO / "spack/repos/spack_repo/colnn/packages/py_colnn_harness/package.py"
REQUIRED = ("openmpi", "openblas", "hdf5", "cmake", "python", "py-numpy", "py-h5py",
            "py-mpi4py", "py-tensorflow", "py-pytest", "colnn", "py-colnn-harness")


@pytest.fixture(scope="module")
def env() -> dict:
    return yaml.safe_load((REPO / "spack.yaml").read_text())["spack"]


def test_environment_names_every_spec(env: dict) -> None:
    names = [re.split(r"[@ +~%=]", s.strip(), maxsplit=1)[0] for s in env["specs"]]
    assert sorted(names) == sorted(REQUIRED)
    hdf5 = next(s for s in env["specs"] if s.startswith("hdf5"))
    assert "+fortran" in hdf5 and "+mpi" in hdf5 and "+hl" in hdf5
    assert env["view"] is True and env["concretizer"]["unify"] is True
    assert not any("%" in s for s in env["specs"]), "compilers are the site's choice"


def test_environment_develops_the_project_from_its_repository(env: dict) -> None:
    repo_dir = REPO / env["repos"]["colnn"]
    meta = yaml.safe_load((repo_dir / "repo.yaml").read_text())["repo"]
    assert meta["namespace"] == "colnn" and repo_dir.name == "colnn"
    assert repo_dir.parent.name == "spack_repo"          # Spack >= 1.0 repository layout
    assert re.fullmatch(r"v2\.\d+", meta["api"])
    assert (repo_dir / "packages/colnn/package.py") == PACKAGE
    assert env["develop"]["colnn"]["path"] == "."
    assert env["develop"]["colnn"]["spec"] == "colnn@=main"
    assert env["develop"]["py-colnn-harness"] == {"spec": "py-colnn-harness@=main", "path": "."}


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Name) and n.func.id == name]


def test_package_recipe_compiles_and_declares_its_variants() -> None:
    source = PACKAGE.read_text()
    compile(source, str(PACKAGE), "exec")
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    assert cls.name == "Colnn" and [b.id for b in cls.bases] == ["CMakePackage"]
    variants = {c.args[0].value: c for c in _calls(tree, "variant")}
    assert {"precision", "openmp", "mpi"} <= set(variants)
    precision = {k.arg: k.value for k in variants["precision"].keywords}
    assert ast.literal_eval(precision["values"]) == ("single", "double")
    assert any(isinstance(n, ast.FunctionDef) and n.name == "cmake_args" for n in cls.body)
    deps = {c.args[0].value for c in _calls(tree, "depends_on")}
    assert {"mpi", "blas", "cmake@3.20:"} <= {d.split("+")[0] if d.startswith("hdf5") else d
                                            for d in deps}


def test_harness_package_matches_pyproject() -> None:
    """py-colnn-harness: a PythonPackage that needs every dependency pyproject.toml names (so
    the image's harness imports) and the colnn library at run time, and points the harness at
    the library, the host programs and the Slurm templates."""
    source = HARNESS_PACKAGE.read_text()
    compile(source, str(HARNESS_PACKAGE), "exec")
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    assert cls.name == "PyColnnHarness" and [b.id for b in cls.bases] == ["PythonPackage"]
    deps = {re.split(r"[@ +~]", c.args[0].value)[0] for c in _calls(tree, "depends_on")}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [re.split(r"[<>=!~ \[]", d)[0].lower() for d in
              project["dependencies"] + project["optional-dependencies"]["keras"]]
    missing = {f"py-{name}" for name in wanted if name != "tf-keras"} - deps
    assert not missing, f"pyproject.toml dependencies without a Spack dependency: {missing}"
    assert {"colnn", "python", "py-keras"} <= deps
    for name in ("COLNN_LIB", "COLNN_HOST_BIN", "COLNN_SLURM_TEMPLATES"):
        assert f'"{name}' in source
    assert "install_tree(\"slurm\"" in source


def test_package_passes_only_options_the_project_defines() -> None:
    tree = ast.parse(PACKAGE.read_text())
    used = {c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call)
            and isinstance(c.func, ast.Attribute)
            and c.func.attr in ("define", "define_from_variant")}
    cmake = "\n".join(p.read_text() for p in REPO.glob("**/CMakeLists.txt")
                      if "build" not in p.relative_to(REPO).parts[:1])
    defined = set(re.findall(r"option\((\w+)", cmake)) | set(re.findall(r"set\((\w+) .*CACHE", cmake))
    assert used and used <= defined, used - defined


def test_spack_concretizes_the_environment(tmp_path: Path) -> None:
    spack = shutil.which("spack")
    if spack is None:
        pytest.skip("spack is not on PATH: concretization is checked where Spack is installed "
                    "(see the README's Spack section)")
    # in a copy of the recipes, so that spack.lock and .spack-env stay out of the repository;
    # develop paths are relative, so the copy develops from the real tree
    env_dir = tmp_path / "env"
    shutil.copytree(REPO / "spack", env_dir / "spack")
    text = (REPO / "spack.yaml").read_text().replace("path: .\n", f"path: {REPO}\n")
    (env_dir / "spack.yaml").write_text(text)
    proc = subprocess.run([spack, "-e", str(env_dir), "concretize", "-f"], capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for root in ("colnn@main", "py-colnn-harness@main", "hdf5@", "py-tensorflow@"):
        assert re.search(rf"^ [-+\[\] ]+\w{{7}}  {re.escape(root)}", proc.stdout, re.M), root


# ---------------------------------------------------------------------------------------------
DEFINITION = REPO / "containers/colnn.def"


def _stages(text: str) -> list[dict]:
    """[{'header': {...}, 'sections': {'%post': body, ...}}] of a multi-stage definition."""
    stages: list[dict] = []
    section = None
    for line in text.splitlines():
        if line.startswith("Bootstrap:"):
            stages.append({"header": {}, "sections": {}})
            section = None
        if not stages or line.lstrip().startswith("#") and section is None:
            continue
        m = re.match(r"^(Bootstrap|From|Stage):\s*(\S+)", line)
        if m and section is None:
            stages[-1]["header"][m.group(1)] = m.group(2)
        elif line.startswith("%"):
            section = line.split()[0] + (" from " + line.split()[2] if " from " in line else "")
            stages[-1]["sections"][section] = ""
        elif section is not None:
            stages[-1]["sections"][section] += line + "\n"
    return stages


def test_apptainer_definition_is_multi_stage_and_complete() -> None:
    build, runtime = _stages(DEFINITION.read_text())
    assert build["header"]["Stage"] == "build" and runtime["header"]["Stage"] == "runtime"
    assert {"%files", "%post"} <= set(build["sections"])
    assert {"%files from build", "%post", "%runscript", "%test", "%labels",
            "%help"} <= set(runtime["sections"])
    post = build["sections"]["%post"]
    assert "spack -e . install" in post and "pip" not in post   # Spack installs the harness
    assert "spack env activate --sh" in post
    copied = runtime["sections"]["%files from build"]
    assert all(d in copied for d in ("/opt/software", "/opt/views", "/opt/spack-environment"))
    assert "$APPTAINER_ENVIRONMENT" in runtime["sections"]["%post"]
    assert re.search(r"exec harness \"\$@\"", runtime["sections"]["%runscript"])
    assert "harness demo" in runtime["sections"]["%test"]   # Keras -> library -> verified


@pytest.mark.parametrize("stage, section", [(0, "%post"), (1, "%post"), (1, "%runscript"),
                                            (1, "%test")])
def test_apptainer_scripts_parse_as_shell(stage: int, section: str, tmp_path: Path) -> None:
    body = _stages(DEFINITION.read_text())[stage]["sections"][section]
    script = tmp_path / "s.sh"
    script.write_text(body)
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # scripts/setup.sh installs shellcheck; Apptainer runs these sections with /bin/sh
    proc = subprocess.run(["shellcheck", "-s", "sh", "-S", "warning", str(script)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_no_machine_paths_in_the_recipes() -> None:
    for path in (DEFINITION, REPO / "spack.yaml", PACKAGE, HARNESS_PACKAGE):
        text = path.read_text()
        for bad in ("/work/", "/tmp/", "/root/", "/home/"):
            assert bad not in text, f"{path}: {bad}"


def test_declared_python_versions_are_the_ones_the_code_needs() -> None:
    """requires-python (pyproject.toml) and the Spack package's python@ lower bound equal the
    oldest Python the harness code runs on, as vermin finds it from the code itself (tomllib
    makes it 3.11)."""
    proc = subprocess.run([str(Path(sys.executable).parent / "vermin"), "--no-tips", "--no-parse-comments", str(REPO / "harness")],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r"Minimum required versions: (?:~?2\.\d+, )?~?(3\.\d+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    needed = found.group(1)
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert declared.replace(" ", "") == f">={needed}", (declared, needed)
    spack_python = re.search(r'depends_on\("python@([0-9.]+):"', HARNESS_PACKAGE.read_text())
    assert spack_python and spack_python.group(1) == needed
