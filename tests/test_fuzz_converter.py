"""Reliability of the Keras converter under bad input (issue 9): a bounded fuzz run, and proof
that no file makes the converter (or verify's Keras loading) execute code from the file.

The full run is ``python tests/fuzz_converter.py --mutants 1000 --seed 1``; here 200 mutants
(seeded, a few seconds) must give no failure. The seed models are built by real Keras once and
cached in build/fuzz-seeds.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import fuzz_converter as fz
from harness.convert import load_any
from harness.errors import ConversionError, HarnessError
from harness.keras_reader import read_keras

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def seeds() -> dict[str, Path]:
    return {p.name: p for p in fz.build_seeds()}


# --------------------------------------------------------------------------------------------
# the fuzz run


def test_bounded_fuzz_run_has_no_failures(seeds: dict[str, Path], tmp_path: Path) -> None:
    report = fz.fuzz(200, seed=1, cli_sample=8, workdir=tmp_path)
    summary = report.summary()
    print(summary)
    assert len(report.mutants) == 200, summary
    assert not report.failures, summary
    assert report.cli_checked == 8 and not report.cli_failures, summary
    assert not report.canary_created, summary
    kinds = {m.kind for m in report.mutants}
    assert kinds == set(fz.KINDS), f"mutation families not exercised: {set(fz.KINDS) - kinds}"
    outcomes = {r.outcome for r in report.results}
    assert outcomes == {"user_error", "ok"}, summary


def test_classifier_flags_what_the_user_must_not_see(tmp_path: Path) -> None:
    path = str(tmp_path / "m.keras")
    assert fz.classify(path, ConversionError(f"{path}: layer 'x' (Lambda): not supported")) \
        .outcome == "user_error"
    try:
        {}["kernel"]
    except KeyError as exc:  # a traceback the user would see
        result = fz.classify(path, exc)
    assert result.outcome == "FAILURE" and "KeyError" in result.detail
    assert fz.classify(path, TypeError("'NoneType' object is not subscriptable")).outcome \
        == "FAILURE"
    assert fz.classify(path, RecursionError()).outcome == "FAILURE"
    # a HarnessError must name the file and be one line
    assert fz.classify(path, ConversionError("layer has no config")).outcome == "FAILURE"
    assert fz.classify(path, HarnessError(f"{path}: two\nlines")).outcome == "FAILURE"
    # a conversion that "succeeds" must leave a valid model file behind
    assert fz.classify(path, None, str(tmp_path / "missing.colnn")).outcome == "FAILURE"
    bad = tmp_path / "bad.colnn"
    bad.write_text("colnn 1\ngarbage\n")
    assert fz.classify(path, None, str(bad)).outcome == "FAILURE"


def test_runner_reports_a_hang(seeds: dict[str, Path], tmp_path: Path) -> None:
    """A FIFO without a writer blocks open() forever: the worker is killed after the limit."""
    runner = fz.Runner(timeout=1.0)
    try:
        warm = runner.run(str(seeds["k3_chain.keras"]), str(tmp_path / "warm.colnn"))
        assert warm.outcome == "ok", warm.detail
        fifo = tmp_path / "fifo.keras"
        os.mkfifo(fifo)
        hang = runner.run(str(fifo), str(tmp_path / "hang.colnn"))
        assert hang.outcome == "FAILURE" and hang.detail.startswith("hang"), hang.detail
        runner.timeout = 60.0   # the fresh worker's start must not count as a hang on a busy machine
        again = runner.run(str(seeds["k2_chain.h5"]), str(tmp_path / "again.colnn"))
        assert again.outcome == "ok", again.detail  # a fresh worker took over
    finally:
        runner.close()


# --------------------------------------------------------------------------------------------
# no file can make the converter execute code


def _with_config(seed: Path, dst: Path, edit: Any) -> Path:
    """A copy of a .keras seed whose config.json went through ``edit`` (config -> config)."""
    with zipfile.ZipFile(seed) as z:
        members = [(i.filename, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(dst, "w") as z:
        for name, blob in members:
            if name == "config.json":
                blob = json.dumps(edit(json.loads(blob))).encode()
            z.writestr(name, blob)
    return dst


def _h5_with_config(seed: Path, dst: Path, edit: Any) -> Path:
    dst.write_bytes(seed.read_bytes())
    with h5py.File(dst, "r+") as f:
        raw = f.attrs["model_config"]
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        f.attrs["model_config"] = json.dumps(edit(config))
    return dst


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A file the payloads create when executed; the payload is shown to be live first."""
    path = tmp_path / "CANARY"
    fz.run_canary_code(fz.canary_code(path))
    assert path.exists(), "the bytecode payload does not work: the tests would prove nothing"
    path.unlink()
    return path


def _refused(path: Path, canary: Path, *words: str) -> str:
    with pytest.raises(ConversionError) as info:
        read_keras(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    for word in words:
        assert word in message, message
    assert not canary.exists(), "the converter executed code from the file"
    return message


def test_lambda_bytecode_in_keras3_config_is_refused(seeds: dict[str, Path], tmp_path: Path,
                                                     canary: Path) -> None:
    code = fz.canary_code(canary)

    def add_lambda(config: dict) -> dict:
        layers = config["config"]["layers"]
        layers.insert(2, fz.lambda_layer_k3(code))  # Sequential k3_paper
        return config

    src = _with_config(seeds["k3_paper.keras"], tmp_path / "lambda.keras", add_lambda)
    _refused(src, canary, "'evil' (Lambda)", "not supported")

    def lambda_activation(config: dict) -> dict:
        config["config"]["layers"][1]["config"]["activation"] = {
            "class_name": "__lambda__", "config": {"code": code, "defaults": None,
                                                   "closure": None}}
        return config

    src = _with_config(seeds["k3_paper.keras"], tmp_path / "lambda_act.keras",
                       lambda_activation)
    _refused(src, canary, "__lambda__")


def test_foreign_modules_and_registered_objects_are_refused(seeds: dict[str, Path],
                                                            tmp_path: Path,
                                                            canary: Path) -> None:
    def os_system(config: dict) -> dict:
        layer = config["config"]["layers"][1]
        layer.update({"module": "os", "class_name": "system",
                      "config": {"command": f"touch {canary}"}})
        return config

    src = _with_config(seeds["k3_paper.keras"], tmp_path / "os.keras", os_system)
    _refused(src, canary, "module 'os'")

    def registered(config: dict) -> dict:
        config["config"]["layers"][1]["registered_name"] = "MyPackage>EvilDense"
        return config

    src = _with_config(seeds["k3_paper.keras"], tmp_path / "registered.keras", registered)
    _refused(src, canary, "MyPackage>EvilDense")

    def subprocess_activation(config: dict) -> dict:
        config["config"]["layers"][1]["config"]["activation"] = {
            "module": "subprocess", "class_name": "Popen", "config": {"args": ["touch",
                                                                              str(canary)]}}
        return config

    src = _with_config(seeds["k3_paper.keras"], tmp_path / "popen.keras", subprocess_activation)
    _refused(src, canary, "module 'subprocess'")

    def dtype_policy(config: dict) -> dict:
        config["config"]["layers"][1]["config"]["dtype"] = {
            "module": "os", "class_name": "system", "config": {"name": "float32"}}
        return config

    src = _with_config(seeds["k3_paper.keras"], tmp_path / "policy.keras", dtype_policy)
    _refused(src, canary, "dtype policy", "'os'")


def test_pickled_object_arrays_in_h5_are_refused(seeds: dict[str, Path], tmp_path: Path,
                                                 canary: Path) -> None:
    blob = fz.pickled_object_bytes(canary)
    pickle.loads(blob)  # the payload is live
    assert canary.exists()
    canary.unlink()
    src = tmp_path / "pickle.h5"
    src.write_bytes(seeds["k2_paper.h5"].read_bytes())
    with h5py.File(src, "r+") as f:
        kernel = [n for n in f["model_weights/dense_0/dense_0"] if n.startswith("kernel")][0]
        name = f"model_weights/dense_0/dense_0/{kernel}"
        del f[name]
        f.create_dataset(name, data=np.void(blob))  # opaque pickle bytes instead of floats
        f["model_weights"].attrs["payload"] = np.void(blob)
        f.attrs.create("object_refs", [f["model_weights"].ref], dtype=h5py.ref_dtype)
    _refused(src, canary, "kernel")
    # the same payload inside a .keras weights file
    dst = tmp_path / "pickle.keras"
    with zipfile.ZipFile(seeds["k3_paper.keras"]) as z:
        members = [(i.filename, z.read(i)) for i in z.infolist()]
    weights = tmp_path / "w.h5"
    weights.write_bytes(dict(members)["model.weights.h5"])
    with h5py.File(weights, "r+") as f:
        del f["layers/dense/vars/0"]
        f.create_dataset("layers/dense/vars/0", data=np.void(blob))
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in members:
            z.writestr(name, weights.read_bytes() if name == "model.weights.h5" else data)
    _refused(dst, canary, "kernel")


def test_lambda_bytecode_in_a_tf_keras_h5_is_refused_by_convert_and_verify(
        seeds: dict[str, Path], tmp_path: Path, canary: Path) -> None:
    """The Keras 2 form of a Lambda (marshalled bytecode in the .h5 model_config): refused by
    the converter, by verify's Keras loading, and by tf_keras under the scope verify uses,
    while plain ``tf_keras.models.load_model`` (what verify called before) runs it."""
    code = fz.canary_code(canary)

    def add_lambda(config: dict) -> dict:
        config["config"]["layers"].append(fz.lambda_layer_k2(code))
        return config

    src = _h5_with_config(seeds["k2_paper.h5"], tmp_path / "lambda.h5", add_lambda)
    _refused(src, canary, "'evil' (Lambda)")
    from harness import verify

    with pytest.raises(HarnessError):
        verify._load_keras_model(str(src))
    assert not canary.exists()
    with pytest.raises(Exception, match="(?i)lambda"):
        verify._load_tf_keras_h5(str(src))
    assert not canary.exists(), "tf_keras ran the Lambda's bytecode in safe mode"
    import tf_keras

    try:
        tf_keras.models.load_model(str(src), compile=False)  # the unprotected call
    except Exception:  # noqa: BLE001 - it may fail after running the payload
        pass
    assert canary.exists(), "control: unprotected tf_keras no longer runs Lambda bytecode " \
                            "(the scope in verify may be unnecessary now)"


# --------------------------------------------------------------------------------------------
# static check: the readers cannot execute code


_FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "import_module", "load_model",
                    "func_load", "deserialize_keras_object", "loads", "load", "system",
                    "popen", "Popen", "run", "call", "check_output", "spawn", "fork"}
_FORBIDDEN_MODULES = {"pickle", "marshal", "dill", "joblib", "shelve", "importlib", "keras",
                      "tf_keras", "tensorflow", "subprocess", "cloudpickle", "types"}


def _static_problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                else [node.module or ""]
            for name in names:
                if name.split(".")[0] in _FORBIDDEN_MODULES:
                    problems.append(f"line {node.lineno}: imports {name}")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else \
                func.attr if isinstance(func, ast.Attribute) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) \
                and isinstance(func.value, ast.Name) else ""
            if name in ("load", "loads") and owner == "json":
                continue
            if name in ("getattr", "setattr") and not (len(node.args) >= 2 and isinstance(
                    node.args[1], ast.Constant)):
                problems.append(f"line {node.lineno}: {name} with a computed name")
            if name in _FORBIDDEN_CALLS:
                problems.append(f"line {node.lineno}: calls {owner + '.' if owner else ''}{name}")
            for kw in node.keywords:
                if kw.arg == "allow_pickle":
                    problems.append(f"line {node.lineno}: allow_pickle")
                if kw.arg == "dtype" and isinstance(kw.value, (ast.Name, ast.Constant)) and \
                        getattr(kw.value, "id", getattr(kw.value, "value", None)) in ("object",
                                                                                      "O"):
                    problems.append(f"line {node.lineno}: object dtype")
        elif isinstance(node, ast.Attribute) and node.attr in ("ref_dtype", "vlen_dtype",
                                                               "special_dtype", "asstr"):
            problems.append(f"line {node.lineno}: h5py object/vlen dtype {node.attr}")
    return problems


@pytest.mark.parametrize("module", ["keras_reader.py", "convert.py"])
def test_converter_modules_cannot_execute_code(module: str) -> None:
    problems = _static_problems(REPO / "harness" / module)
    assert not problems, f"harness/{module}: " + "; ".join(problems)


def test_static_check_catches_forbidden_calls(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nimport numpy as np\nx = eval('1')\n"
                   "y = np.load('f', allow_pickle=True)\nimport json\nz = json.loads('1')\n"
                   "import keras\nm = keras.models.load_model('m.keras')\n")
    problems = _static_problems(bad)
    # pickle, eval, np.load, allow_pickle, keras, load_model
    assert len(problems) == 6, problems


def test_verify_loads_keras_in_safe_mode_only_after_the_static_reader() -> None:
    tree = ast.parse((REPO / "harness" / "verify.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == "load_model"]
    assert calls, "verify.py no longer loads Keras models? update this test"
    for call in calls:
        safe = [kw for kw in call.keywords if kw.arg == "safe_mode"]
        assert safe and isinstance(safe[0].value, ast.Constant) and safe[0].value.value is True, \
            f"verify.py line {call.lineno}: load_model without safe_mode=True"
    loader = next(n for n in ast.walk(tree)
                  if isinstance(n, ast.FunctionDef) and n.name == "_load_keras_model")
    first_call = next(n for n in ast.walk(loader) if isinstance(n, ast.Call))
    assert isinstance(first_call.func, ast.Name) and first_call.func.id == "read_keras_isolated", \
        "verify must run the static reader before Keras sees the file"


def test_config_numbers_are_not_broadcast_to_huge_inputs(seeds: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """A Normalization whose mean/variance are numbers in the config, on an input of 2**25
    features: a few bytes of JSON must not become a quarter of a gigabyte of tensors."""
    def huge(config: dict) -> dict:
        layers = config["config"]["layers"]
        first = layers[0]
        first["config"]["batch_shape"] = [None, 2 ** 25]
        norm = {"module": "keras.layers", "class_name": "Normalization", "registered_name": None,
                "name": "norm", "config": {"name": "norm", "dtype": "float32", "axis": -1,
                                           "mean": 0.5, "variance": 2.0, "invert": False}}
        config["config"]["layers"] = [first, norm]
        return config

    src = _with_config(seeds["k3_paper.keras"], tmp_path / "huge.keras", huge)
    with pytest.raises(ConversionError, match="refusing to broadcast 'mean'"):
        read_keras(src)


# --------------------------------------------------------------------------------------------
# a read that never finishes


def test_a_keras_read_that_hangs_is_stopped_with_an_error(seeds: dict[str, Path],
                                                          tmp_path: Path) -> None:
    """A FIFO with no writer blocks the reader forever (as libhdf5 does on some damaged
    files): the CLI gives up after --read-timeout with an error naming the file; a good file
    read the same way (in the child) gives the same model as a read in this process."""
    fifo = tmp_path / "model.keras"
    os.mkfifo(fifo)
    out = tmp_path / "out.colnn"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "harness", "convert", str(fifo), "--from",
                           "keras", "-o", str(out), "--read-timeout", "3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{fifo}: reading the file did not finish within 3 s" in proc.stderr
    assert time.monotonic() - start < 60 and not out.exists()
    with pytest.raises(ConversionError, match="must be > 0"):
        load_any(fifo, "keras", read_timeout=0)
    good = next(p for name, p in seeds.items() if name.endswith(".h5"))
    here, there = read_keras(good), load_any(good)
    assert [lay.type for lay in here.layers] == [lay.type for lay in there.layers]
    for a, b in zip(here.layers, there.layers):
        assert a.attrs == b.attrs and a.tensors.keys() == b.tensors.keys()
        for key, value in a.tensors.items():
            np.testing.assert_array_equal(value, b.tensors[key])
