"""Fuzzing the Keras -> colnn converter with mutated ``.keras`` and ``.h5`` files.

Seed models are saved once by real Keras (Keras 3 ``.keras`` and legacy ``.h5``, Keras 2 /
tf_keras ``.h5`` and ``.keras``) into a cache directory, in a subprocess, so the fuzzing process
never imports TensorFlow. Each mutant is a seed changed at byte level (truncation, bit flips,
overwritten runs) or structurally (zip members, the JSON model config, HDF5 groups, datasets
and attributes). Every mutant is converted in a worker process (``harness.convert.convert``,
the Python API behind ``harness convert``) under a per-mutant time limit and classified:

* ``user_error``: a ConversionError/HarnessError whose message names the file (what the CLI
  prints as one line, exit code 2);
* ``ok``: the conversion succeeded and the written model file reads back, with finite
  tensors and finite parameters;
* ``FAILURE``: any other exception (a traceback the user would see), a HarnessError that does
  not name the file, an invalid output, a hang past the limit, or a crashed worker.

A sample of mutants also goes through the real CLI (``python -m harness convert``): exit code
2 with a one-line ``harness: error:`` message naming the file and no traceback (0 for mutants
that convert).

    python tests/fuzz_converter.py --mutants 1000 --seed 1

The test suite imports this module (tests/test_fuzz_converter.py) for a bounded run.
"""

from __future__ import annotations

import argparse
import base64
import copy
import io
import json
import math
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SEED_DIR = REPO_ROOT / "build" / "fuzz-seeds"
TIMEOUT_S = 5.0

# seed name -> (builder expression run in the seed subprocess, file name)
SEED_FILES = ("k3_chain.keras", "k3_paper.keras", "k3_norm64.keras", "k3_chain.h5",
              "k3_paper.h5", "k2_chain.h5", "k2_paper.h5", "k2_chain.keras")

_BUILD_SCRIPT = r"""
import os, sys, warnings
warnings.filterwarnings("ignore")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, sys.argv[2])
from keras_models import (adapted_normalization, functional_chain, keras2, keras3, paper_like,
                          sequential)
out = sys.argv[1]
k3 = keras3()
functional_chain(k3).save(os.path.join(out, "k3_chain.keras"))
paper_like(k3).save(os.path.join(out, "k3_paper.keras"))
L = k3.layers
sequential(k3, [adapted_normalization(k3, 4, "float64"), L.Dense(5, activation="tanh", dtype="float64"),
                L.ReLU(max_value=6.0, dtype="float64"), L.Dense(2, dtype="float64")],
           n_in=4, dtype="float64", name="norm64").save(os.path.join(out, "k3_norm64.keras"))
functional_chain(k3).save(os.path.join(out, "k3_chain.h5"))
paper_like(k3).save(os.path.join(out, "k3_paper.h5"))
k2 = keras2()
functional_chain(k2).save(os.path.join(out, "k2_chain.h5"))
paper_like(k2).save(os.path.join(out, "k2_paper.h5"))
functional_chain(k2).save(os.path.join(out, "k2_chain.keras"))
"""


def build_seeds(directory: Path = DEFAULT_SEED_DIR, force: bool = False) -> list[Path]:
    """The seed model files, saved by real Keras into ``directory`` unless already there."""
    directory = Path(directory)
    paths = [directory / name for name in SEED_FILES]
    if force or not all(p.is_file() and p.stat().st_size > 0 for p in paths):
        directory.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.run([sys.executable, "-c", _BUILD_SCRIPT, str(directory),
                               str(REPO_ROOT / "tests")], capture_output=True, text=True,
                              env=env, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"building the fuzz seeds failed:\n{proc.stderr[-4000:]}")
    from harness.keras_reader import read_keras
    for p in paths:  # every seed must convert, or the mutants test nothing
        read_keras(p)
    return paths


# ---------------------------------------------------------------------------------------------
# payloads that would run code if a reader deserialized them


def canary_code(canary: Path) -> str:
    """Base64 marshalled bytecode of a function that creates ``canary`` when called (the
    form Keras uses for a Lambda layer's Python lambda)."""
    import marshal

    namespace: dict[str, Any] = {}
    # builds the test payload from trusted text; the converter never sees Python source
    exec(f"def payload(x):\n    open({str(canary)!r}, 'w').close()\n    return x\n",
         namespace)
    return base64.b64encode(marshal.dumps(namespace["payload"].__code__)).decode("ascii")


def run_canary_code(code: str) -> None:
    """Executes a payload of canary_code (used by the tests to show the payload is live)."""
    import marshal
    import types

    fn = types.FunctionType(marshal.loads(base64.b64decode(code)), {"__builtins__": __builtins__})
    fn(None)


def lambda_layer_k3(code: str, name: str = "evil") -> dict:
    """A Keras 3 Lambda layer config carrying marshalled bytecode."""
    return {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
            "name": name,
            "config": {"name": name, "trainable": True, "dtype": "float32",
                       "function": {"class_name": "__lambda__",
                                    "config": {"code": code, "defaults": None,
                                               "closure": None}},
                       "arguments": {}},
            "build_config": {"input_shape": [None, 6]}}


def lambda_layer_k2(code: str, name: str = "evil") -> dict:
    """A Keras 2 (tf_keras) Lambda layer config carrying marshalled bytecode."""
    return {"class_name": "Lambda", "name": name,
            "config": {"name": name, "trainable": True, "dtype": "float32",
                       "function": [code, None, None], "function_type": "lambda",
                       "module": "__main__", "output_shape": None,
                       "output_shape_type": "raw", "output_shape_module": None,
                       "arguments": {}}}


def pickled_object_bytes(canary: Path) -> bytes:
    """A pickle that creates ``canary`` when unpickled (os.system via __reduce__)."""
    import pickle

    class _Evil:
        def __reduce__(self) -> tuple:
            return (open, (str(canary), "w"))

    return pickle.dumps(_Evil(), protocol=2)


# ---------------------------------------------------------------------------------------------
# JSON mutations


_WRONG_VALUES: list[Callable[[random.Random], Any]] = [
    lambda r: None, lambda r: True, lambda r: "", lambda r: "x" * r.choice([1, 100, 200_000]),
    lambda r: 0, lambda r: -1, lambda r: -(2 ** 31), lambda r: 2 ** 31, lambda r: 10 ** 30,
    lambda r: -10 ** 30, lambda r: 2 ** 64 + 1, lambda r: 1.5, lambda r: -0.0,
    lambda r: float("nan"), lambda r: float("inf"), lambda r: -float("inf"), lambda r: 1e308,
    lambda r: [], lambda r: {}, lambda r: [None, None], lambda r: [None, -4],
    lambda r: [None, 10 ** 12], lambda r: [None, 2.5], lambda r: {"class_name": "x"},
    lambda r: [[["deep"]]], lambda r: "\u0000\u202e\U0010ffff", lambda r: "\ud800",
    lambda r: "a\nb", lambda r: " padded ",
]

_EVIL_CLASSES: list[Callable[[random.Random, str], dict]] = [
    lambda r, c: {"class_name": "Lambda", "config": {"function": c}},
    lambda r, c: {"module": "os", "class_name": "system", "config": {"command": "touch /x"}},
    lambda r, c: {"module": "subprocess", "class_name": "Popen", "config": {"args": ["true"]}},
    lambda r, c: {"module": "builtins", "class_name": "eval", "config": "1+1"},
    lambda r, c: {"module": "keras.layers", "class_name": "Dense",
                  "registered_name": "Custom>Dense", "config": {"units": 3}},
    lambda r, c: {"module": None, "class_name": "MyLayer", "registered_name": "MyLayer",
                  "config": {}},
    lambda r, c: {"class_name": "__lambda__", "config": {"code": c, "defaults": None,
                                                         "closure": None}},
    lambda r, c: {"class_name": "TFOpLambda", "config": {"function": "math.add"}},
    lambda r, c: {"class_name": "Sequential", "config": {"layers": []}},
    lambda r, c: {"class_name": "Functional", "config": {"layers": [], "input_layers": [],
                                                         "output_layers": []}},
    lambda r, c: {"class_name": "Conv2D", "config": {"filters": 3}},
    lambda r, c: {"class_name": "NoSuchLayer", "config": {}},
    lambda r, c: {"class_name": "__main__.Evil", "module": "__main__", "config": {}},
    lambda r, c: {"class_name": "function", "config": "os.system", "module": "os"},
    lambda r, c: {"class_name": "function", "config": "no_such_activation",
                  "module": "keras.activations"},
]

_ACTIVATIONS = ["linear", "relu", "tanh", "exponential", "softmax", "no_such_act", "",
                "os.system", "__lambda__", "lambda x: x", "Relu", "leaky_relu", "gelu"]


def _nodes(tree: Any, path: tuple = ()) -> list[tuple]:
    """All paths (tuples of keys/indices) into a JSON tree, the root excluded."""
    out: list[tuple] = []
    stack: list[tuple[Any, tuple]] = [(tree, path)]
    while stack:
        node, p = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                out.append(p + (k,))
                stack.append((v, p + (k,)))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                out.append(p + (i,))
                stack.append((v, p + (i,)))
    return out


def _get(tree: Any, path: tuple) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _layers_of(config: Any) -> list:
    try:
        layers = config["config"]["layers"]
        return layers if isinstance(layers, list) else []
    except (KeyError, TypeError):
        return []


def mutate_json(config: Any, rng: random.Random, code: str) -> tuple[Any, str]:
    """One structural mutation of a Keras model config; returns (new config, description)."""
    cfg = copy.deepcopy(config)
    layers = _layers_of(cfg)
    ops = ["delete_key", "wrong_value", "wrong_value", "evil_layer", "evil_activation",
           "activation", "deep_nesting", "shuffle_layers", "duplicate_layer", "drop_layer",
           "dup_names", "top_class", "dtype_policy", "huge_units", "nested_model", "big_string",
           "layer_param"]
    op = rng.choice(ops)
    nodes = _nodes(cfg)
    if op == "delete_key" and nodes:
        dict_paths = [p for p in nodes if isinstance(p[-1], str)]
        p = rng.choice(dict_paths)
        del _get(cfg, p[:-1])[p[-1]]
        return cfg, f"delete {'/'.join(map(str, p))}"
    if op == "wrong_value" and nodes:
        p = rng.choice(nodes)
        value = rng.choice(_WRONG_VALUES)(rng)
        _get(cfg, p[:-1])[p[-1]] = value
        shown = repr(value) if len(repr(value)) < 40 else f"<{type(value).__name__} " \
                                                         f"len {len(repr(value))}>"
        return cfg, f"set {'/'.join(map(str, p))} = {shown}"
    if op == "evil_layer" and layers:
        i = rng.randrange(len(layers))
        evil = rng.choice(_EVIL_CLASSES)(rng, code)
        if rng.random() < 0.5:
            evil = lambda_layer_k3(code) if rng.random() < 0.5 else lambda_layer_k2(code)
        keep = layers[i] if isinstance(layers[i], dict) else {}
        evil.setdefault("name", keep.get("name", "evil"))
        if "inbound_nodes" in keep:
            evil["inbound_nodes"] = keep["inbound_nodes"]
        layers[i] = evil
        return cfg, f"layer {i} -> {evil.get('module')}.{evil.get('class_name')}"
    if op in ("evil_activation", "activation") and layers:
        dense = [l for l in layers if isinstance(l, dict) and isinstance(l.get("config"), dict)]
        if dense:
            layer = rng.choice(dense)
            if op == "evil_activation":
                act: Any = rng.choice(_EVIL_CLASSES)(rng, code)
            else:
                act = rng.choice(_ACTIVATIONS)
            layer["config"]["activation"] = act
            return cfg, f"activation of {layer.get('name')} -> {str(act)[:50]}"
    if op == "deep_nesting":
        depth = rng.choice([50, 500, 5000, 100_000])
        deep: Any = "x"
        for _ in range(depth):
            deep = [deep] if rng.random() < 0.5 else {"a": deep}
        target = rng.choice(nodes) if nodes else ("config",)
        _get(cfg, target[:-1])[target[-1]] = deep
        return cfg, f"nest depth {depth} at {'/'.join(map(str, target))}"
    if op == "shuffle_layers" and len(layers) > 1:
        rng.shuffle(layers)
        return cfg, "shuffle layers"
    if op == "duplicate_layer" and layers:
        i = rng.randrange(len(layers))
        layers.insert(i, copy.deepcopy(layers[i]))
        return cfg, f"duplicate layer {i}"
    if op == "drop_layer" and layers:
        i = rng.randrange(len(layers))
        del layers[i]
        return cfg, f"drop layer {i}"
    if op == "dup_names" and len(layers) > 2:
        a, b = rng.sample(range(len(layers)), 2)
        if isinstance(layers[a], dict) and isinstance(layers[b], dict):
            for layer, src in ((layers[b], layers[a]),):
                layer["name"] = src.get("name")
                if isinstance(layer.get("config"), dict) and isinstance(src.get("config"), dict):
                    layer["config"]["name"] = src["config"].get("name")
            return cfg, f"layer {b} renamed to layer {a}'s name"
    if op == "top_class" and isinstance(cfg, dict):
        cfg["class_name"] = rng.choice(["Model", "Functional", "Sequential", "Lambda", "os",
                                        None, 3])
        if rng.random() < 0.5:
            cfg["module"] = rng.choice(["os", "keras", "subprocess", None])
        return cfg, f"top class -> {cfg['class_name']} (module {cfg.get('module')})"
    if op == "dtype_policy" and layers:
        layer = rng.choice(layers)
        if isinstance(layer, dict) and isinstance(layer.get("config"), dict):
            layer["config"]["dtype"] = rng.choice(
                ["float16", "mixed_float16", "float64", "int8", {"module": "os",
                 "class_name": "system", "config": {"name": "float32"}},
                 {"class_name": "DTypePolicy", "config": {"name": {"x": 1}}}, 5, None])
            return cfg, f"dtype of {layer.get('name')} -> {layer['config']['dtype']}"
    if op == "huge_units" and layers:
        dense = [l for l in layers if isinstance(l, dict) and l.get("class_name") == "Dense"]
        if dense:
            layer = rng.choice(dense)
            value = rng.choice([0, -3, 2 ** 31 - 1, 2 ** 31, 10 ** 9, 3.0, "3", True, None])
            layer["config"]["units"] = value
            return cfg, f"units of {layer.get('name')} -> {value!r}"
    if op == "nested_model" and layers:
        i = rng.randrange(len(layers))
        inner = copy.deepcopy(config)
        if isinstance(inner, dict):
            inner["name"] = "inner"
            keep = layers[i] if isinstance(layers[i], dict) else {}
            if "inbound_nodes" in keep:
                inner["inbound_nodes"] = keep["inbound_nodes"]
            layers[i] = inner
            return cfg, f"layer {i} -> nested copy of the model"
    if op == "big_string" and layers:
        layer = rng.choice(layers)
        if isinstance(layer, dict):
            layer["name"] = "n" * rng.choice([10_000, 2_000_000])
            return cfg, f"layer name of {len(layer['name'])} characters"
    if op == "layer_param" and layers:
        layer = rng.choice(layers)
        if isinstance(layer, dict) and isinstance(layer.get("config"), dict):
            key = rng.choice(["rate", "epsilon", "momentum", "alpha", "negative_slope",
                              "max_value", "threshold", "axis", "mean", "variance", "invert",
                              "use_bias", "center", "scale", "batch_shape", "batch_input_shape",
                              "shape", "lora_rank", "quantization_config"])
            value = rng.choice(_WRONG_VALUES)(rng)
            if isinstance(value, str) and len(value) > 1000:
                value = value[:1000]
            layer["config"][key] = value
            return cfg, f"{layer.get('name')}.{key} = {str(value)[:40]!r}"
    # fall back: delete a random key somewhere
    dict_paths = [p for p in nodes if isinstance(p[-1], str)]
    if dict_paths:
        p = rng.choice(dict_paths)
        del _get(cfg, p[:-1])[p[-1]]
        return cfg, f"delete {'/'.join(map(str, p))}"
    return {"config": None}, "replace config"


def dump_json(config: Any, rng: random.Random) -> bytes:
    """JSON text of a mutated config (NaN/Infinity as Python's json writes them)."""
    try:
        return json.dumps(config).encode("utf-8")
    except (RecursionError, ValueError):
        return b"[" * 200_000 + b"]" * 200_000  # deeper than any JSON parser recursion limit


# ---------------------------------------------------------------------------------------------
# byte mutations


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    n = rng.choice([0, 1, 4, 8, 30, 100, rng.randrange(len(data)), len(data) - 1,
                    len(data) // 2])
    return data[:n], f"truncated to {n} of {len(data)} bytes"


def bitflip(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    buf = bytearray(data)
    count = rng.choice([1, 1, 2, 8, 64])
    # flips past the 8-byte magic keep the format detection, so they reach the readers
    for _ in range(count):
        i = rng.randrange(8, len(buf)) if len(buf) > 8 else rng.randrange(len(buf))
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf), f"{count} bit flip(s)"


def overwrite(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    buf = bytearray(data)
    n = rng.choice([4, 16, 256])
    start = rng.randrange(8, max(9, len(buf) - n))
    fill = rng.choice([b"\xff", b"\x00", b"\x7f", None])
    chunk = bytes(rng.randrange(256) for _ in range(n)) if fill is None else fill * n
    buf[start:start + n] = chunk
    return bytes(buf), f"{n} bytes at {start} overwritten ({'random' if fill is None else fill})"


BYTE_MUTATIONS = (truncate, bitflip, bitflip, overwrite)


# ---------------------------------------------------------------------------------------------
# HDF5 mutations (applied in place to a copy of the file)


def _h5_items(handle: Any) -> tuple[list[str], list[str]]:
    groups: list[str] = []
    datasets: list[str] = []
    import h5py

    def visit(name: str, obj: Any) -> None:
        (datasets if isinstance(obj, h5py.Dataset) else groups).append(name)

    handle.visititems(visit)
    return groups, datasets


def mutate_h5(path: Path, rng: random.Random, code: str, canary: Path,
              config_attr: bool) -> str:
    """One structural mutation of the HDF5 file at ``path`` (in place); returns a description.

    ``config_attr``: the file carries a ``model_config`` attribute (legacy .h5), which JSON
    mutations then target.
    """
    import h5py

    ops = ["wrong_shape", "wrong_dtype", "nonfinite", "delete_dataset", "extra_dataset",
           "string_dataset", "delete_group", "attr", "object_attr", "pickle_dataset",
           "dataset_as_group", "links", "scalar", "compressed_bomb", "weight_names",
           "empty_dataset"]
    if config_attr:
        ops += ["model_config"] * 6 + ["model_config_raw", "keras_version"]
    op = rng.choice(ops)
    with h5py.File(path, "r+") as f:
        groups, datasets = _h5_items(f)
        if op in ("model_config", "model_config_raw"):
            raw = f.attrs.get("model_config")
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8")
            if op == "model_config":
                config, desc = mutate_json(json.loads(raw), rng, code)
                text = dump_json(config, rng)
            else:
                text = rng.choice([b"", b"{", b"null", b"[1,2]", b"\xff\xfe", b"NaN",
                                   b'{"class_name": "Sequential"}', b"1e999999"])
                desc = f"raw {text[:20]!r}"
            del f.attrs["model_config"]
            if len(text) > 60_000:  # above HDF5's compact attribute limit: dense storage
                f.attrs.create("model_config", np.frombuffer(text, dtype=np.uint8))
                desc += " (as a uint8 array)"
            elif rng.random() < 0.8:
                f.attrs["model_config"] = text
            else:
                f.attrs["model_config"] = text.decode("utf-8", "replace")
            return f"model_config: {desc}"
        if op == "keras_version":
            value = rng.choice([np.int64(3), b"\xff", "x.y", np.array([1.0, 2.0]), "999"])
            f.attrs["keras_version"] = value
            return f"keras_version = {value!r}"
        if not datasets:
            return "no datasets"
        name = rng.choice(datasets)
        ds = f[name]
        shape, dtype = ds.shape, ds.dtype
        if op == "wrong_shape":
            new_shape = rng.choice([(), (1,), (0,), tuple(reversed(shape)), shape + (1,),
                                    (shape[0] + 1,) + shape[1:] if shape else (2,),
                                    (10 ** 6,)])
            del f[name]
            f.create_dataset(name, data=np.ones(new_shape, dtype=dtype))
            return f"{name}: shape {shape} -> {new_shape}"
        if op == "wrong_dtype":
            new = rng.choice(["int32", "int64", "float16", "complex64", "bool", "uint8", "S4"])
            data = np.ones(shape, dtype=new)
            del f[name]
            f.create_dataset(name, data=data)
            return f"{name}: dtype {dtype} -> {new}"
        if op == "nonfinite":
            data = np.asarray(ds[()], dtype=dtype)
            bad = rng.choice([np.nan, np.inf, -np.inf])
            flat = data.reshape(-1)
            if flat.size:
                flat[rng.randrange(flat.size)] = bad
            ds[...] = flat.reshape(shape)
            return f"{name}: one value -> {bad}"
        if op == "delete_dataset":
            del f[name]
            return f"{name}: deleted"
        if op == "extra_dataset":
            parent = name.rsplit("/", 1)[0] if "/" in name else ""
            extra = rng.choice(["99", "2", "extra", "0x"])
            target = f"{parent}/{extra}" if parent else extra
            if target in f:
                del f[target]
            f.create_dataset(target, data=np.ones(shape or (1,), dtype=dtype))
            return f"extra dataset {target}"
        if op == "string_dataset":
            del f[name]
            f.create_dataset(name, data=np.array(["a", "b"], dtype=h5py.string_dtype()))
            return f"{name}: variable-length strings"
        if op == "empty_dataset":
            del f[name]
            f.create_dataset(name, dtype=dtype)  # null dataspace (h5py.Empty)
            return f"{name}: empty dataspace"
        if op == "delete_group" and groups:
            g = rng.choice(groups)
            if g in f:
                del f[g]
            return f"group {g}: deleted"
        if op == "attr" and groups:
            g = f[rng.choice(groups)]
            key = rng.choice(["name", "weight_names", "layer_names", "backend", "keras_version"])
            value = rng.choice([np.int64(7), np.array([b"\xff\xfe"]), np.array([1, 2]),
                                "x" * 100, np.array([], dtype="S1"), b"kernel:0"])
            g.attrs[key] = value
            return f"{g.name}.attrs[{key}] = {value!r:.40}"
        if op == "object_attr":
            target = f[rng.choice(groups)] if groups and rng.random() < 0.5 else f
            key = rng.choice(["weight_names", "model_config", "name", "layer_names", "payload"])
            kind = rng.choice(["ref", "pickle", "opaque"])
            if key in target.attrs:
                del target.attrs[key]
            if kind == "ref":
                target.attrs.create(key, [ds.ref], dtype=h5py.ref_dtype)
            elif kind == "pickle":
                target.attrs.create(key, np.void(pickled_object_bytes(canary)))
            else:
                target.attrs[key] = np.frombuffer(pickled_object_bytes(canary), dtype=np.uint8)
            return f"{target.name}.attrs[{key}]: {kind}"
        if op == "pickle_dataset":
            del f[name]
            if rng.random() < 0.5:
                f.create_dataset(name, data=np.void(pickled_object_bytes(canary)))
                return f"{name}: opaque pickle bytes"
            f.create_dataset(name, data=[f["/"].ref], dtype=h5py.ref_dtype)
            return f"{name}: object references"
        if op == "dataset_as_group":
            del f[name]
            f.create_group(name).create_dataset("0", data=np.ones(shape or (1,), dtype=dtype))
            return f"{name}: replaced by a group"
        if op == "links":
            del f[name]
            kind = rng.choice(["soft_self", "soft_missing", "external", "external_missing"])
            if kind == "soft_self":
                f[name] = h5py.SoftLink("/" + name)
            elif kind == "soft_missing":
                f[name] = h5py.SoftLink("/no/such/thing")
            elif kind == "external":
                f[name] = h5py.ExternalLink(str(path), "/")
            else:
                f[name] = h5py.ExternalLink("/no/such/file.h5", "/x")
            return f"{name}: {kind} link"
        if op == "scalar":
            del f[name]
            f.create_dataset(name, data=np.float32(1.0))
            return f"{name}: scalar"
        if op == "compressed_bomb":
            del f[name]
            big = rng.choice([(4096, 4096), (20000, 20000)])
            f.create_dataset(name, shape=big, dtype="float32", compression="gzip",
                             chunks=(256, 256), fillvalue=1.0)
            return f"{name}: {big} gzip, unwritten (fill value only)"
        if op == "weight_names":
            owners = [g for g in groups if "weight_names" in f[g].attrs]
            if owners:
                g = f[rng.choice(owners)]
                names = list(g.attrs["weight_names"])
                choice = rng.choice(["reverse", "missing", "dup", "ints", "extra"])
                if choice == "reverse":
                    names = names[::-1]
                elif choice == "missing":
                    names = [b"no/such:0"] + names[1:]
                elif choice == "dup":
                    names = names[:1] * len(names)
                elif choice == "extra":
                    names = names + [b"extra:0"]
                if choice == "ints":
                    g.attrs["weight_names"] = np.arange(len(names))
                else:
                    g.attrs["weight_names"] = np.array(names, dtype="S") if names else \
                        np.array([], dtype="S1")
                return f"{g.name} weight_names: {choice}"
        ds[...] = np.asarray(ds[()]) if ds.shape else ds[()]
        return "no-op"


# ---------------------------------------------------------------------------------------------
# mutants


@dataclass
class Mutant:
    index: int
    seed_name: str
    kind: str          # family of the mutation (see KINDS)
    description: str
    path: Path


KERAS_KINDS = ("keras_bytes", "keras_member_missing", "keras_member_corrupt", "keras_config",
               "keras_metadata", "keras_weights_h5", "keras_weights_bytes")
H5_KINDS = ("h5_bytes", "h5_model_config", "h5_structure")
KINDS = KERAS_KINDS + H5_KINDS
_KERAS_WEIGHTS = {"keras_bytes": 2, "keras_member_missing": 1, "keras_member_corrupt": 1,
                  "keras_config": 5, "keras_metadata": 1, "keras_weights_h5": 4,
                  "keras_weights_bytes": 2}
_H5_WEIGHTS = {"h5_bytes": 3, "h5_model_config": 5, "h5_structure": 5}


def _read_members(path: Path) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(path) as z:
        return [(info, z.read(info)) for info in z.infolist()]


def _write_zip(path: Path, members: list[tuple[str, bytes]], rng: random.Random) -> None:
    comp = rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
    with zipfile.ZipFile(path, "w", compression=comp) as z:
        for name, data in members:
            z.writestr(name, data)


def make_mutant(seed: Path, index: int, rng: random.Random, directory: Path,
                canary: Path) -> Mutant:
    """Writes one mutant of ``seed`` into ``directory``."""
    code = canary_code(canary)
    is_zip = seed.suffix == ".keras"
    weights = _KERAS_WEIGHTS if is_zip else _H5_WEIGHTS
    kind = rng.choices(list(weights), weights=list(weights.values()))[0]
    out = directory / f"m{index:05d}_{seed.stem}{seed.suffix}"
    data = seed.read_bytes()
    desc = ""
    if kind in ("keras_bytes", "h5_bytes"):
        if kind == "keras_bytes" and rng.random() < 0.5:  # damage deflated members too
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
                for info, blob in _read_members(seed):
                    z.writestr(info.filename, blob)
            data = buf.getvalue()
        new, desc = rng.choice(BYTE_MUTATIONS)(data, rng)
        out.write_bytes(new)
    elif kind == "h5_model_config" or kind == "h5_structure":
        out.write_bytes(data)
        desc = mutate_h5(out, rng, code, canary, config_attr=True) if kind == "h5_model_config" \
            else _h5_structure(out, rng, code, canary)
    else:
        members = [(info.filename, blob) for info, blob in _read_members(seed)]
        names = [n for n, _ in members]
        if kind == "keras_member_missing":
            victim = rng.choice(names)
            members = [(n, b) for n, b in members if n != victim]
            if rng.random() < 0.3:
                members.append((rng.choice(["../../etc/passwd", "/abs/config.json", "a" * 300]),
                                b"{}"))
            desc = f"member {victim} removed"
        elif kind == "keras_member_corrupt":
            victim = rng.choice(names)
            blob = rng.choice([b"", b"\xff\xfe\x00", b"{", b"null", b"[]", b"\x89HDF\r\n\x1a\n",
                               b"PK\x03\x04", b'"just a string"', b"1" * 100_000])
            if rng.random() < 0.3:  # duplicate member name: which one wins?
                members.append((victim, blob))
                desc = f"member {victim} duplicated with {blob[:12]!r}"
            else:
                members = [(n, blob if n == victim else b) for n, b in members]
                desc = f"member {victim} -> {blob[:12]!r}"
        elif kind == "keras_config":
            config = json.loads(dict(members)["config.json"])
            new_cfg, desc = mutate_json(config, rng, code)
            blob = dump_json(new_cfg, rng)
            members = [(n, blob if n == "config.json" else b) for n, b in members]
        elif kind == "keras_metadata":
            blob = rng.choice([b"{", b"[]", b'{"keras_version": 3}', b'{"keras_version": null}',
                               b'{"keras_version": "abc"}', b'{"keras_version": "2.15.0"}',
                               b'{"keras_version": ["3"]}', b'{"keras_version": "' + b"9" * 5000
                               + b'"}', b"\xff"])
            members = [(n, blob if n == "metadata.json" else b) for n, b in members]
            desc = f"metadata.json -> {blob[:30]!r}"
        elif kind == "keras_weights_h5":
            tmp = directory / f"w{index:05d}.h5"
            tmp.write_bytes(dict(members)["model.weights.h5"])
            desc = mutate_h5(tmp, rng, code, canary, config_attr=False)
            blob = tmp.read_bytes()
            tmp.unlink()
            members = [(n, blob if n == "model.weights.h5" else b) for n, b in members]
            desc = f"weights: {desc}"
        elif kind == "keras_weights_bytes":
            blob, desc = rng.choice(BYTE_MUTATIONS)(dict(members)["model.weights.h5"], rng)
            members = [(n, blob if n == "model.weights.h5" else b) for n, b in members]
            desc = f"weights: {desc}"
        _write_zip(out, members, rng)
    return Mutant(index, seed.name, kind, desc, out)


def _h5_structure(path: Path, rng: random.Random, code: str, canary: Path) -> str:
    """A structural HDF5 mutation that leaves model_config alone (groups, datasets, attrs)."""
    for _ in range(10):
        state = rng.getstate()
        desc = mutate_h5(path, rng, code, canary, config_attr=False)
        if desc not in ("no-op", "no datasets"):
            return desc
        rng.setstate(state)
        rng.random()
    return desc


def make_mutants(seeds: list[Path], count: int, seed: int, directory: Path,
                 canary: Path) -> list[Mutant]:
    """``count`` mutants of ``seeds`` (round robin), reproducible from ``seed``."""
    mutants = []
    for i in range(count):
        rng = random.Random(seed * 1_000_003 + i)
        src = seeds[i % len(seeds)]
        try:
            mutants.append(make_mutant(src, i, rng, directory, canary))
        except Exception as exc:  # noqa: BLE001 - a mutation h5py cannot write: try another
            rng = random.Random(seed * 1_000_003 + i + 7_777_777)
            try:
                mutants.append(make_mutant(src, i, rng, directory, canary))
            except Exception as exc2:  # noqa: BLE001
                print(f"mutant {i}: could not be generated ({exc!r}; {exc2!r})",
                      file=sys.stderr)
    return mutants


# ---------------------------------------------------------------------------------------------
# classification


@dataclass
class Result:
    outcome: str        # "user_error", "ok" or "FAILURE"
    detail: str         # the message, or what went wrong
    exc_type: str = ""
    caught: str = ""    # the exception read_keras' last-resort handler turned into the error


def classify(path: str, exc: Optional[BaseException], output: Optional[str] = None) -> Result:
    """Classifies one conversion of ``path``: the exception it raised, or None for success
    (then ``output`` is the written file, checked by ``check_output``)."""
    from harness.errors import HarnessError

    if exc is None:
        problem = check_output(output) if output is not None else "no output file"
        if problem:
            return Result("FAILURE", f"converted, but the output is invalid: {problem}")
        return Result("ok", "converted")
    name = type(exc).__name__
    message = str(exc)
    if not isinstance(exc, HarnessError):
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
        return Result("FAILURE", f"unexpected {name}: {message[:300]}\n{tb}", name)
    if path not in message:
        return Result("FAILURE", f"{name} does not name the file: {message[:300]}", name)
    if "\n" in message.strip() or len(message) > 2000 + len(path):
        return Result("FAILURE", f"{name} message is not one short line: {message[:300]!r}",
                      name)
    return Result("user_error", message, name)


def check_output(output: str) -> str:
    """'' when ``output`` is a valid colnn model with finite numbers, else the problem."""
    from harness.modelfile import read_model

    try:
        spec = read_model(output)
    except Exception as exc:  # noqa: BLE001 - any failure to read back is the finding
        return f"cannot be read back: {type(exc).__name__}: {exc}"
    for layer in spec.layers:
        for key, tensor in layer.tensors.items():
            if not np.all(np.isfinite(np.asarray(tensor, dtype=np.float64))):
                return f"layer {layer.name}: {key} is not finite"
        values = list(layer.attrs.items())
        for key, value in layer.attrs.items():
            if hasattr(value, "params"):  # an Activation: check its parameters too
                values += [(f"{key}.{k}", v) for k, v in value.params.items()]
        for key, value in values:
            if isinstance(value, float) and not math.isfinite(value):
                return f"layer {layer.name}: {key} = {value}"
    if spec.n_inputs < 1 or not spec.layers:
        return "empty model"
    return ""


def convert_one(path: str, output: str) -> Result:
    """Converts ``path`` with the Python API and classifies the outcome (runs in the worker)."""
    from harness.convert import convert

    try:
        convert(path, output, read_timeout=None)     # the worker is the isolation here
    except BaseException as exc:  # noqa: BLE001 - classify everything, even SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        return classify(path, exc)
    return classify(path, None, output)


# ---------------------------------------------------------------------------------------------
# worker pool with a per-mutant time limit


def _record_safety_net() -> None:
    """Wraps the container readers so that an exception reaching read_keras' last-resort
    handler (which turns it into 'not a readable Keras model file (...)') is recorded with
    its real type: for a file whose container is intact that means unchecked input."""
    from harness import keras_reader

    def wrap(fn: Callable) -> Callable:
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                from harness.errors import HarnessError
                if not isinstance(exc, HarnessError):
                    SAFETY_NET.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                raise
        return inner

    keras_reader._read_zip = wrap(keras_reader._read_zip)
    keras_reader._read_h5 = wrap(keras_reader._read_h5)


SAFETY_NET: list[str] = []


def _worker(conn: Any) -> None:
    import warnings

    warnings.simplefilter("ignore")
    _record_safety_net()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    while True:
        job = conn.recv()
        if job is None:
            return
        path, output = job
        SAFETY_NET.clear()
        try:
            result = convert_one(path, output)
        except Exception as exc:  # noqa: BLE001 - a bug of the fuzzer itself, still reported
            result = Result("FAILURE", f"fuzzer error: {exc!r}", "FuzzerError")
        if SAFETY_NET and result.outcome == "user_error":
            result.caught = SAFETY_NET[-1]
        conn.send((result.outcome, result.detail, result.exc_type, result.caught))


class Runner:
    """One worker process; a hang or a crash is recorded and the worker replaced."""

    def __init__(self, timeout: float = TIMEOUT_S) -> None:
        self.timeout = timeout
        self.ctx = mp.get_context("spawn")
        self.proc: Any = None
        self.conn: Any = None

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join()
        self.proc = None

    def run(self, path: str, output: str) -> Result:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send((path, output))
        # the first job also pays for the worker's imports
        if not self.conn.poll(self.timeout + (10.0 if not hasattr(self, "_warm") else 0.0)):
            self._kill()
            return Result("FAILURE", f"hang: no answer within {self.timeout} s", "Timeout")
        self._warm = True
        try:
            outcome, detail, exc_type, caught = self.conn.recv()
        except (EOFError, OSError):
            code = self.proc.exitcode if self.proc is not None else None
            self._kill()
            return Result("FAILURE", f"worker crashed (exit code {code})", "Crash")
        return Result(outcome, detail, exc_type, caught)

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(None)
                self.proc.join(5)
            except OSError:
                pass
        self._kill()


# ---------------------------------------------------------------------------------------------
# the command-line sample


def cli_check(path: Path, output: Path, expect: str) -> str:
    """'' when ``harness convert`` behaves as the user must see it, else the problem."""
    proc = subprocess.run([sys.executable, "-m", "harness", "convert", str(path), "-o",
                           str(output)], capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT)
    err = proc.stderr.strip()
    if "Traceback" in proc.stderr:
        return f"traceback on stderr: {err[-500:]}"
    if expect == "ok":
        return "" if proc.returncode == 0 else f"exit code {proc.returncode}: {err[-300:]}"
    if proc.returncode != 2:
        return f"exit code {proc.returncode} (expected 2): {err[-300:]}"
    if len(err.splitlines()) != 1 or not err.startswith("harness: error:") \
            or str(path) not in err:
        return f"message is not one line naming the file: {err[:300]!r}"
    return ""


# ---------------------------------------------------------------------------------------------
# driver


@dataclass
class Report:
    mutants: list[Mutant]
    results: list[Result]
    cli_checked: int = 0
    cli_failures: list[str] = field(default_factory=list)
    canary_created: bool = False
    wall_s: float = 0.0

    @property
    def failures(self) -> list[tuple[Mutant, Result]]:
        out = [(m, r) for m, r in zip(self.mutants, self.results) if r.outcome == "FAILURE"]
        return out

    def summary(self) -> str:
        lines = [f"{len(self.mutants)} mutants in {self.wall_s:.1f} s"]
        by_kind: dict[str, Counter] = {}
        for m, r in zip(self.mutants, self.results):
            by_kind.setdefault(m.kind, Counter())[r.outcome] += 1
        lines.append(f"{'kind':24s} {'n':>5s} {'user_error':>10s} {'ok':>5s} {'FAILURE':>8s}")
        for kind in KINDS:
            c = by_kind.get(kind, Counter())
            lines.append(f"{kind:24s} {sum(c.values()):5d} {c['user_error']:10d} {c['ok']:5d} "
                         f"{c['FAILURE']:8d}")
        total = Counter(r.outcome for r in self.results)
        lines.append(f"{'total':24s} {len(self.results):5d} {total['user_error']:10d} "
                     f"{total['ok']:5d} {total['FAILURE']:8d}")
        seeds = Counter(m.seed_name for m in self.mutants)
        lines.append("per seed: " + ", ".join(f"{k} {v}" for k, v in sorted(seeds.items())))
        lines.append(f"CLI sample: {self.cli_checked} run, {len(self.cli_failures)} failed")
        lines.append(f"canary file created: {self.canary_created}")
        for m, r in self.failures[:40]:
            lines.append(f"FAILURE m{m.index} ({m.seed_name}, {m.kind}: {m.description}): "
                         f"{r.detail.splitlines()[0] if r.detail else ''}")
        lines.extend(f"CLI FAILURE {f}" for f in self.cli_failures[:20])
        return "\n".join(lines)


def fuzz(count: int, seed: int, seed_dir: Path = DEFAULT_SEED_DIR, cli_sample: int = 30,
         workdir: Optional[Path] = None, timeout: float = TIMEOUT_S,
         verbose: bool = False) -> Report:
    """Generates ``count`` mutants, converts each, runs a CLI sample; returns the report."""
    t0 = time.perf_counter()
    seeds = build_seeds(seed_dir)
    own_tmp = workdir is None
    tmp = Path(tempfile.mkdtemp(prefix="colnn-fuzz-")) if own_tmp else Path(workdir)
    tmp.mkdir(parents=True, exist_ok=True)
    canary = tmp / "CANARY_code_was_executed"
    mutants = make_mutants(seeds, count, seed, tmp, canary)
    runner = Runner(timeout)
    results: list[Result] = []
    try:
        for m in mutants:
            r = runner.run(str(m.path), str(tmp / f"out{m.index:05d}.colnn"))
            results.append(r)
            if verbose and r.outcome == "FAILURE":
                print(f"FAILURE m{m.index} {m.kind} {m.description}: {r.detail}",
                      file=sys.stderr)
    finally:
        runner.close()
    report = Report(mutants, results)
    with open(tmp / "results.jsonl", "w") as log:
        for m, r in zip(mutants, results):
            log.write(json.dumps({"index": m.index, "seed": m.seed_name, "kind": m.kind,
                                  "mutation": m.description, "outcome": r.outcome,
                                  "detail": r.detail[:500], "caught": r.caught}) + "\n")
    pick = random.Random(seed)
    errors = [(m, r) for m, r in zip(mutants, results) if r.outcome == "user_error"]
    oks = [(m, r) for m, r in zip(mutants, results) if r.outcome == "ok"]
    sample = pick.sample(errors, min(len(errors), max(cli_sample - 3, 0))) + \
        pick.sample(oks, min(len(oks), min(3, cli_sample)))
    for m, r in sample:
        problem = cli_check(m.path, tmp / f"cli{m.index:05d}.colnn", r.outcome)
        report.cli_checked += 1
        if problem:
            report.cli_failures.append(f"m{m.index} ({m.kind}: {m.description}): {problem}")
    report.canary_created = canary.exists()
    report.wall_s = time.perf_counter() - t0
    if own_tmp and not report.failures and not report.cli_failures:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mutants", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seed-dir", type=Path, default=DEFAULT_SEED_DIR,
                   help="cache of the Keras seed models (built on first use)")
    p.add_argument("--cli-sample", type=int, default=30)
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the mutants here (default: a temporary directory, removed when "
                        "nothing failed)")
    p.add_argument("--timeout", type=float, default=TIMEOUT_S)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    report = fuzz(args.mutants, args.seed, args.seed_dir, args.cli_sample, args.workdir,
                  args.timeout, args.verbose)
    print(report.summary())
    bad = report.failures or report.cli_failures or report.canary_created
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
