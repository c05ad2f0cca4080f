"""Read Keras model files into a ModelSpec without importing TensorFlow or Keras.

Supported containers: Keras 3 ``.keras`` (zip with ``config.json`` and ``model.weights.h5``, also
as written by tf_keras), Keras 3 legacy ``.h5`` and Keras 2 (tf_keras) ``.h5``. Only zipfile,
json and h5py touch the file, so nothing in a file can cause code execution: there is no
``eval``, no pickle, and classes are matched against a fixed list (a ``Lambda`` or a custom class
is refused, never imported).

Supported models are single chains: Sequential, or Functional with one input and one output in
which every layer consumes the previous one. Everything else raises ConversionError naming the
file, the layer and its class.

Float64 models: Keras computes some parameters in float32 even in a float64 model (measured with
TensorFlow 2.21 / Keras 3.15 / tf_keras 2.21, see the notes above ``_f32``). The reader
writes those parameters rounded to float32 (as float64 numbers), so that a float64 colnn model
reproduces Keras to ~1e-12 instead of ~1e-8.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .errors import ConversionError, ModelFileError
from .modelfile import Activation, LayerSpec, ModelSpec, validate

__all__ = ["read_keras", "read_keras_isolated", "READ_TIMEOUT_S", "KERAS_ACTIVATIONS",
           "HDF5_MAGIC", "ZIP_MAGIC"]

#: a healthy model file of any size this project meets reads in well under a second
READ_TIMEOUT_S = 120.0

PathLike = Union[str, "os.PathLike[str]"]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"

# Keras activation names (strings in a config) -> colnn activation names.
KERAS_ACTIVATIONS: dict[str, str] = {
    "linear": "linear", "relu": "relu", "relu6": "relu6", "leaky_relu": "leaky_relu",
    "elu": "elu", "selu": "selu", "gelu": "gelu", "silu": "swish", "swish": "swish",
    "sigmoid": "sigmoid", "hard_sigmoid": "hard_sigmoid", "hard_silu": "hard_silu",
    "hard_swish": "hard_silu", "tanh": "tanh", "softplus": "softplus", "softsign": "softsign",
    "exponential": "exponential", "mish": "mish", "softmax": "softmax",
    "log_softmax": "log_softmax",
}

# Layer classes that are pure activations (may also appear nested as a Dense activation).
_ACTIVATION_CLASSES = ("Activation", "ReLU", "LeakyReLU", "ELU", "Softmax")
_SUPPORTED = ("InputLayer", "Dense", "Dropout", "BatchNormalization", "Normalization",
              *_ACTIVATION_CLASSES)
_KERAS_EPSILON = 1e-7  # keras.backend.epsilon(), used by Normalization (measured: 1e-07)
_MAX_EXPANSION = 100  # largest accepted ratio of unpacked to stored bytes (zip member, dataset)
_MAX_BROADCAST = 1 << 24  # most features a config-only number may be broadcast to
_MAX_JSON_DEPTH = 100  # Keras configs nest ~15 deep; deeper is refused before it is walked

# Where TensorFlow-backed Keras uses a float32 value in a float64 model (measured):
# * tf.nn.leaky_relu takes its slope as a float32 attribute: LeakyReLU layers, the
#   'leaky_relu' activation, and ReLU with a slope but no max_value/threshold (which Keras
#   routes to tf.nn.leaky_relu).
# * Keras 3 ReLU clips at ops.cast(max_value), which goes through a float32 tensor.
# * Keras 3 Normalization turns mean/variance given in the config (JSON lists) into float32
#   tensors before casting them to float64.
# Keras 2 (tf_keras) stores ReLU/ELU/LeakyReLU parameters already rounded to float32 in the
# config, so rounding them again changes nothing. ELU alpha, BatchNormalization epsilon and the
# Normalization epsilon are used in float64 (measured exact).


def _clip(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters: messages echo file content (layer
    names, values), which may be huge or hold line breaks."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _f32(value: float) -> float:
    """``value`` rounded to float32, returned as a Python (float64) number."""
    return float(np.float32(value))


def _snake_case(name: str) -> str:
    """Keras' class-name -> weight-group name rule (LeakyReLU -> leaky_re_lu)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


@dataclass
class _Context:
    """What the converter knows about the file while converting its layers."""

    path: str
    keras_major: int
    precision: str = "float32"
    notes: list[tuple[str, str]] = field(default_factory=list)

    def fail(self, message: str) -> ConversionError:
        return ConversionError(f"{self.path}: {_clip(message, 800)}")

    def layer_fail(self, name: str, cls: str, message: str) -> ConversionError:
        return ConversionError(f"{self.path}: layer '{_clip(name, 100)}' ({_clip(cls, 100)}): "
                               f"{_clip(message, 800)}")

    def rounded(self, value: float) -> float:
        """A parameter Keras uses as float32: rounded in float64 models (notes above _f32)."""
        return _f32(value) if self.precision == "float64" else float(value)


# ---------------------------------------------------------------------------------------------
# weights access


class _Weights:
    """Per-layer weight lookup for the two containers; arrays are read only after shape checks."""

    def __init__(self, ctx: _Context, root: Any, layout: str, config_layers: list[dict]) -> None:
        self.ctx = ctx
        self.root = root
        self.layout = layout  # "v3" (model.weights.h5) or "legacy" (.h5 model_weights)
        self.groups: dict[str, Any] = {}
        if layout == "v3":
            self._index_v3(config_layers)

    def _index_v3(self, config_layers: list[dict]) -> None:
        layers_group = self.root.get("layers")
        by_name: dict[str, Any] = {}
        if layers_group is not None:
            for key in layers_group:
                vars_group = layers_group[key].get("vars")
                if vars_group is None:
                    continue
                label = vars_group.attrs.get("name")
                if isinstance(label, bytes):
                    label = label.decode("utf-8", "replace")
                if isinstance(label, str):
                    by_name[label] = vars_group
        counters: dict[str, int] = {}
        for layer in config_layers:
            cls = str(layer.get("class_name", ""))
            name = _layer_name(layer)
            base = _snake_case(cls)
            count = counters.get(base, 0)
            counters[base] = count + 1
            group_name = base if count == 0 else f"{base}_{count}"
            if name in by_name:
                self.groups[name] = by_name[name]
            elif layers_group is not None and group_name in layers_group \
                    and "vars" in layers_group[group_name]:
                self.groups[name] = layers_group[group_name]["vars"]

    def get(self, name: str, cls: str, expected: list[str]) -> list[Any]:
        """The datasets of a layer, in the order of ``expected`` (Keras variable order)."""
        if self.layout == "v3":
            group = self.groups.get(name)
            datasets = []
            if group is not None:
                keys = sorted((k for k in group if k.isdigit()), key=int)
                datasets = [group[k] for k in keys]
            if len(datasets) != len(expected):
                raise self.ctx.layer_fail(
                    name, cls, f"weights file has {len(datasets)} variable(s) for this layer, "
                    f"expected {len(expected)} ({', '.join(expected) or 'none'})")
            return datasets
        weights_root = self.root
        group = weights_root.get(name) if name in weights_root else None
        names: list[str] = []
        if group is not None:
            raw = group.attrs.get("weight_names", [])
            if isinstance(raw, (str, bytes)) or getattr(raw, "ndim", 1) != 1:
                raise self.ctx.layer_fail(name, cls, "weights file: 'weight_names' is not a "
                                          "list of names")
            try:
                names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw]
                for n in names:
                    n.encode("utf-8")  # h5py hands undecodable bytes over as surrogates
            except UnicodeError:
                raise self.ctx.layer_fail(name, cls, "weights file: 'weight_names' holds "
                                          "names that are not UTF-8") from None
        if len(names) != len(expected):
            raise self.ctx.layer_fail(
                name, cls, f"weights file has {len(names)} weight(s) for this layer, expected "
                f"{len(expected)} ({', '.join(expected) or 'none'})")
        base = [n.rsplit("/", 1)[-1].split(":", 1)[0] for n in names]
        if sorted(base) == sorted(expected) and len(set(base)) == len(base):
            order = [names[base.index(e)] for e in expected]
        else:
            order = names  # unusual names: trust Keras' order
        try:
            return [group[n] for n in order]
        except KeyError as exc:
            raise self.ctx.layer_fail(name, cls, f"weight {exc} listed but missing") from None


def _read_array(ctx: _Context, name: str, cls: str, what: str, dataset: Any,
                shape: tuple[int, ...]) -> np.ndarray:
    """Read one dataset after checking its shape and type (no allocation before the check)."""
    ds_shape = tuple(getattr(dataset, "shape", ()) or ())
    if ds_shape != shape:
        raise ctx.layer_fail(name, cls, f"{what} has shape {ds_shape}, expected {shape}")
    if getattr(dataset, "dtype", np.dtype("O")).kind != "f":
        raise ctx.layer_fail(name, cls, f"{what} is not a floating-point array")
    # A compressed dataset of a few bytes can claim gigabytes; Keras stores weights
    # uncompressed, so refuse wild expansion before allocating.
    wanted = int(np.prod(shape, dtype=np.int64)) * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    if wanted > _MAX_EXPANSION * max(stored, 1 << 20):
        raise ctx.layer_fail(name, cls, f"{what} claims {wanted} bytes but stores {stored}; "
                             "refusing a possible decompression bomb")
    arr = np.asarray(dataset[()], dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ctx.layer_fail(name, cls, f"{what} holds NaN or Inf values")
    return arr


# ---------------------------------------------------------------------------------------------
# config helpers


def _layer_name(layer: dict) -> str:
    cfg = layer.get("config") if isinstance(layer.get("config"), dict) else {}
    return str(layer.get("name") or cfg.get("name") or "?")


def _policy_name(dtype: Any) -> str:
    """The dtype policy name of a layer config's 'dtype' entry (None means Keras' float32)."""
    if dtype is None:
        return "float32"
    if isinstance(dtype, str):
        return dtype
    if isinstance(dtype, dict):
        cfg = dtype.get("config")
        if isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
            return cfg["name"]
        if isinstance(cfg, str):
            return cfg
    return repr(dtype)


def _check_builtin(ctx: _Context, obj: dict, name: str) -> str:
    """The class name of a config object, refusing custom (registered/foreign-module) classes."""
    cls = obj.get("class_name")
    if not isinstance(cls, str):
        raise ctx.layer_fail(name, "?", "config entry has no class_name")
    module = obj.get("module")
    registered = obj.get("registered_name")
    if module is not None and not (isinstance(module, str)
                                   and (module == "keras" or module.startswith("keras.")
                                        or module.startswith("tf_keras"))):
        raise ctx.layer_fail(name, cls, f"custom class from module '{module}' is not supported")
    if registered not in (None, cls):
        raise ctx.layer_fail(name, cls, f"custom registered class '{registered}' is not "
                             "supported")
    return cls


def _axis_is_last(axis: Any) -> bool:
    """True for the feature axis of a 2-D (batch, features) tensor: -1, 1, [-1] or [1]."""
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    return isinstance(axis, int) and not isinstance(axis, bool) and axis in (-1, 1)


def _number(ctx: _Context, name: str, cls: str, cfg: dict, key: str, default: Any) -> Any:
    """A finite number from the config (``default`` when absent); None only where the default
    is None (an optional parameter such as ReLU's max_value)."""
    value = cfg.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ctx.layer_fail(name, cls, f"'{key}' must be a number, got {value!r}")
    if not np.isfinite(value):
        raise ctx.layer_fail(name, cls, f"'{key}' must be finite, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------
# activations


def _activation_from_string(ctx: _Context, name: str, cls: str, act: str) -> Activation:
    canonical = KERAS_ACTIVATIONS.get(act)
    if canonical is None:
        raise ctx.layer_fail(name, cls, f"activation '{act}' is not supported (supported: "
                             f"{', '.join(sorted(KERAS_ACTIVATIONS))})")
    if canonical == "leaky_relu":
        # keras.activations.leaky_relu is saved without its slope: the default 0.2 applies,
        # computed by tf.nn.leaky_relu with a float32 slope.
        return Activation.make("leaky_relu", negative_slope=ctx.rounded(0.2))
    if canonical == "hard_sigmoid" and ctx.keras_major < 3:
        return Activation.make("hard_sigmoid", slope=0.2, offset=0.5)  # Keras 2 definition
    if canonical == "gelu":
        return Activation.make("gelu", approximate=False)  # keras.activations.gelu default
    return Activation.make(canonical)


def _activation_from_layer_config(ctx: _Context, name: str, cls: str, cfg: dict,
                                  label: str | None = None) -> Activation:
    """The Activation of an activation-type layer class (also used for nested objects).

    ``label`` is the class description used in messages (e.g. "Dense with nested ReLU").
    """
    kind = cls
    cls = label or cls
    if kind == "Activation":
        return _activation_value(ctx, name, cls, cfg.get("activation", "linear"))
    if kind == "LeakyReLU":
        key = "negative_slope" if "negative_slope" in cfg else "alpha"  # Keras 3 / Keras 2
        slope = _number(ctx, name, cls, cfg, key, 0.3)
        return Activation.make("leaky_relu", negative_slope=ctx.rounded(slope))
    if kind == "ReLU":
        slope = _number(ctx, name, cls, cfg, "negative_slope", 0.0)
        max_value = _number(ctx, name, cls, cfg, "max_value", None)
        threshold = _number(ctx, name, cls, cfg, "threshold", 0.0)
        if slope < 0 or threshold < 0 or (max_value is not None and max_value < 0):
            raise ctx.layer_fail(name, cls, "negative ReLU parameters are not supported")
        if slope != 0.0 and max_value is None and threshold == 0.0:
            slope = ctx.rounded(slope)  # Keras routes this case to tf.nn.leaky_relu
        if max_value is not None:
            max_value = ctx.rounded(max_value)
        return Activation.make("relu", negative_slope=slope, max_value=max_value,
                               threshold=threshold)
    if kind == "ELU":
        alpha = _number(ctx, name, cls, cfg, "alpha", 1.0)
        return Activation.make("elu", alpha=alpha)
    if kind == "Softmax":
        if not _axis_is_last(cfg.get("axis", -1)):
            raise ctx.layer_fail(name, cls, f"softmax over axis {cfg.get('axis')!r} is not "
                                 "supported (only the feature axis -1)")
        return Activation.make("softmax")
    raise ctx.layer_fail(name, cls, "not an activation layer")


def _activation_value(ctx: _Context, name: str, cls: str, value: Any) -> Activation:
    """A Dense/Activation 'activation' entry: None, a string, or a nested serialized object."""
    if value is None:
        return Activation.make("linear")
    if isinstance(value, str):
        return _activation_from_string(ctx, name, cls, value)
    if isinstance(value, dict):
        inner_cls = _check_builtin(ctx, value, name)
        inner_cfg = value.get("config")
        if inner_cls == "function" and isinstance(inner_cfg, str):
            return _activation_from_string(ctx, name, cls, inner_cfg)
        if inner_cls in _ACTIVATION_CLASSES and isinstance(inner_cfg, dict):
            return _activation_from_layer_config(ctx, name, inner_cls, inner_cfg,
                                                 label=f"{cls} with nested {inner_cls}")
        raise ctx.layer_fail(name, cls, f"activation object of class '{inner_cls}' is not "
                             "supported")
    raise ctx.layer_fail(name, cls, f"activation {value!r} is not supported")


def _nested_policies(cfg: dict) -> list[str]:
    """Dtype policies of activation layers nested in a Dense/Activation config."""
    act = cfg.get("activation")
    if isinstance(act, dict) and isinstance(act.get("config"), dict) \
            and act.get("class_name") in _ACTIVATION_CLASSES:
        return [_policy_name(act["config"].get("dtype"))]
    return []


# ---------------------------------------------------------------------------------------------
# model structure


def _model_config(ctx: _Context, config: Any) -> tuple[str, dict]:
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise ctx.fail("model configuration is not a Keras model config")
    cls = config.get("class_name")
    if cls not in ("Sequential", "Functional", "Model"):
        raise ctx.fail(f"top-level class '{cls}' is not supported (Sequential or Functional "
                       "models only)")
    return str(cls), config["config"]


def _tensor_refs(node: Any) -> list[str]:
    """Layer names referenced by a Keras 3 inbound-node structure (keras_history entries)."""
    refs: list[str] = []
    if isinstance(node, dict):
        if node.get("class_name") == "__keras_tensor__" and isinstance(node.get("config"), dict):
            history = node["config"].get("keras_history")
            if isinstance(history, list) and history:
                refs.append(str(history[0]))
            return refs
        for value in node.values():
            refs.extend(_tensor_refs(value))
    elif isinstance(node, list):
        for value in node:
            refs.extend(_tensor_refs(value))
    return refs


def _node_inputs(ctx: _Context, layer: dict) -> list[str]:
    """Names of the layers feeding a functional layer; refuses shared layers."""
    name = _layer_name(layer)
    cls = str(layer.get("class_name"))
    nodes = layer.get("inbound_nodes", [])
    if not isinstance(nodes, list):
        raise ctx.layer_fail(name, cls, "malformed inbound_nodes")
    if len(nodes) > 1:
        raise ctx.layer_fail(name, cls, f"layer is called {len(nodes)} times (shared layers "
                             "are not supported)")
    if not nodes:
        return []
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        return _tensor_refs(node)
    if isinstance(node, list):  # Keras 2: [[name, node_index, tensor_index, kwargs], ...]
        refs = []
        for entry in node:
            if not isinstance(entry, list) or not entry:
                raise ctx.layer_fail(name, cls, "malformed inbound node")
            refs.append(str(entry[0]))
            if len(entry) > 3:
                refs.extend(_tensor_refs(entry[3]))
        return refs
    raise ctx.layer_fail(name, cls, "malformed inbound node")


def _io_names(ctx: _Context, value: Any, what: str) -> list[str]:
    """Normalise input_layers/output_layers ([name, 0, 0] or [[name, 0, 0], ...])."""
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        return [value[0]]
    if isinstance(value, list) and all(isinstance(v, list) and v for v in value):
        return [str(v[0]) for v in value]
    if isinstance(value, dict):  # dict-structured inputs/outputs
        return [n for v in value.values() for n in _io_names(ctx, v, what)]
    raise ctx.fail(f"malformed {what} in the model config")


def _chain(ctx: _Context, cls: str, cfg: dict) -> tuple[list[dict], Optional[dict]]:
    """The layers in evaluation order (InputLayer excluded) and the InputLayer, if any."""
    layers = cfg.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ctx.fail("model config has no layers")
    for layer in layers:
        if not isinstance(layer, dict):
            raise ctx.fail("malformed layer entry in the model config")
        _check_builtin(ctx, layer, _layer_name(layer))
        if not isinstance(layer.get("config"), dict):
            raise ctx.layer_fail(_layer_name(layer), str(layer.get("class_name")),
                                 "layer has no config")
    if cls == "Sequential":
        input_layer = None
        body = []
        for index, layer in enumerate(layers):
            if layer.get("class_name") == "InputLayer":
                if index != 0:
                    raise ctx.layer_fail(_layer_name(layer), "InputLayer",
                                         "InputLayer inside a Sequential model")
                input_layer = layer
            else:
                body.append(layer)
        return body, input_layer
    inputs = _io_names(ctx, cfg.get("input_layers"), "input_layers")
    outputs = _io_names(ctx, cfg.get("output_layers"), "output_layers")
    if len(inputs) != 1:
        raise ctx.fail(f"model has {len(inputs)} inputs ({', '.join(inputs)}); only single-input "
                       "chains are supported")
    if len(outputs) != 1:
        raise ctx.fail(f"model has {len(outputs)} outputs ({', '.join(outputs)}); only "
                       "single-output chains are supported")
    by_name: dict[str, dict] = {}
    for layer in layers:
        by_name[_layer_name(layer)] = layer
    feeds: dict[str, str] = {}
    consumers: dict[str, list[str]] = {}
    for layer in layers:
        name = _layer_name(layer)
        layer_cls = str(layer.get("class_name"))
        refs = _node_inputs(ctx, layer)
        if layer_cls == "InputLayer":
            continue
        if len(refs) != 1:
            raise ctx.layer_fail(name, layer_cls, f"layer takes {len(refs)} input tensors "
                                 f"({', '.join(refs) or 'none'}); only single-input chains "
                                 "are supported")
        if refs[0] not in by_name:
            raise ctx.layer_fail(name, layer_cls, f"input '{refs[0]}' is not a layer of the "
                                 "model")
        feeds[name] = refs[0]
        consumers.setdefault(refs[0], []).append(name)
    for source, users in consumers.items():
        if len(users) > 1:
            src_cls = str(by_name[source].get("class_name"))
            raise ctx.layer_fail(source, src_cls, f"output feeds {len(users)} layers "
                                 f"({', '.join(users)}); branching models are not supported")
    input_name = inputs[0]
    if input_name not in by_name or by_name[input_name].get("class_name") != "InputLayer":
        raise ctx.fail(f"model input '{input_name}' is not an InputLayer")
    order: list[dict] = []
    current = outputs[0]
    seen: set[str] = set()
    while current != input_name:
        if current in seen or current not in by_name:
            raise ctx.fail(f"layer graph does not lead from the output back to the input "
                           f"(at '{current}')")
        seen.add(current)
        order.append(by_name[current])
        if current not in feeds:
            raise ctx.layer_fail(current, str(by_name[current].get("class_name")),
                                 "layer has no input")
        current = feeds[current]
    order.reverse()
    unused = [n for n in by_name if n not in seen and n != input_name]
    if unused:
        u = by_name[unused[0]]
        raise ctx.layer_fail(unused[0], str(u.get("class_name")), "layer is not on the path "
                             "from the input to the output (branching models are not "
                             "supported)")
    return order, by_name[input_name]


def _input_width(ctx: _Context, cfg: dict, input_layer: Optional[dict],
                 body: list[dict]) -> int:
    candidates: list[Any] = []
    if input_layer is not None:
        icfg = input_layer.get("config", {})
        candidates += [icfg.get("batch_shape"), icfg.get("batch_input_shape")]
        if icfg.get("shape") is not None:
            candidates.append([None, *icfg["shape"]] if isinstance(icfg["shape"], list)
                              else None)
    if body:
        first = body[0].get("config", {})
        candidates += [first.get("batch_input_shape"), first.get("batch_shape")]
    candidates.append(cfg.get("build_input_shape"))
    if body:
        build = body[0].get("build_config")
        if isinstance(build, dict):
            candidates.append(build.get("input_shape"))
    for shape in candidates:
        if shape is None:
            continue
        if not isinstance(shape, list) or len(shape) != 2:
            raise ctx.fail(f"input shape {shape} is not supported (only 2-D (batch, features) "
                           "inputs)")
        n = shape[1]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 2**31 - 1:
            raise ctx.fail(f"input shape {shape} has no valid feature count")
        return n
    raise ctx.fail("model has no input shape (an unbuilt Sequential model?)")


def _precision(ctx: _Context, body: list[dict], input_layer: Optional[dict]) -> str:
    """float64 when every computing layer (nested activations included) is float64."""
    policies: set[str] = set()
    for layer in body:
        cfg = layer.get("config", {})
        name = _layer_name(layer)
        dtype = cfg.get("dtype")
        if isinstance(dtype, dict):  # a policy object: never of a foreign or custom class
            module, registered = dtype.get("module"), dtype.get("registered_name")
            if (module is not None and not (isinstance(module, str) and (
                    module == "keras" or module.startswith(("keras.", "tf_keras"))))) \
                    or registered not in (None, dtype.get("class_name")):
                raise ctx.layer_fail(name, str(layer.get("class_name")),
                                     f"dtype policy of custom class "
                                     f"'{str(dtype.get('class_name'))[:80]}' (module "
                                     f"'{str(module)[:80]}') is not supported")
        for policy in [_policy_name(cfg.get("dtype")), *_nested_policies(cfg)]:
            if policy not in ("float32", "float64"):
                raise ctx.layer_fail(name, str(layer.get("class_name")),
                                     f"dtype policy '{policy}' is not supported (float32 or "
                                     "float64 only)")
            policies.add(policy)
    if policies == {"float64"}:
        if input_layer is not None:
            in_dtype = _policy_name(input_layer.get("config", {}).get("dtype"))
            if in_dtype != "float64":
                ctx.notes.append(("keras_input_dtype", f"{in_dtype} (Keras rounds inputs to "
                                                       "it before the float64 layers)"))
        return "float64"
    if policies == {"float32", "float64"}:
        ctx.notes.append(("precision_note", "Keras model mixes float32 and float64 layers; "
                                            "converted as float32"))
    return "float32"


# ---------------------------------------------------------------------------------------------
# layer conversion


def _convert_layer(ctx: _Context, layer: dict, n_in: int, weights: _Weights) -> LayerSpec:
    name = _layer_name(layer)
    cls = str(layer.get("class_name"))
    cfg = layer.get("config")
    if not isinstance(cfg, dict):
        raise ctx.layer_fail(name, cls, "layer has no config")
    if cls not in _SUPPORTED:
        raise ctx.layer_fail(name, cls, "layer class is not supported (supported: "
                             f"{', '.join(_SUPPORTED)})")
    if cls == "InputLayer":
        raise ctx.layer_fail(name, cls, "InputLayer in the middle of the model")
    if cls == "Dense":
        units = cfg.get("units")
        if isinstance(units, bool) or not isinstance(units, int) or not 1 <= units < 2**31:
            raise ctx.layer_fail(name, cls, f"invalid units {units!r}")
        if cfg.get("lora_rank"):
            raise ctx.layer_fail(name, cls, "LoRA-enabled Dense layers are not supported")
        if cfg.get("quantization_config"):
            raise ctx.layer_fail(name, cls, "quantized Dense layers are not supported")
        use_bias = bool(cfg.get("use_bias", True))
        act = _activation_value(ctx, name, cls, cfg.get("activation"))
        expected = ["kernel", "bias"] if use_bias else ["kernel"]
        datasets = weights.get(name, cls, expected)
        tensors = {"kernel": _read_array(ctx, name, cls, "kernel", datasets[0], (n_in, units))}
        if use_bias:
            tensors["bias"] = _read_array(ctx, name, cls, "bias", datasets[1], (units,))
        return LayerSpec("dense", name, {"units": units, "use_bias": use_bias,
                                         "activation": act}, tensors)
    if cls == "Dropout":
        rate = _number(ctx, name, cls, cfg, "rate", 0.0)
        if not 0.0 <= rate < 1.0:
            raise ctx.layer_fail(name, cls, f"rate {rate} outside [0, 1)")
        weights.get(name, cls, [])
        return LayerSpec("dropout", name, {"rate": rate}, {})
    if cls == "BatchNormalization":
        if not _axis_is_last(cfg.get("axis", -1)):
            raise ctx.layer_fail(name, cls, f"axis {cfg.get('axis')!r} is not supported (only "
                                 "the feature axis -1)")
        center = bool(cfg.get("center", True))
        scale = bool(cfg.get("scale", True))
        epsilon = _number(ctx, name, cls, cfg, "epsilon", 1e-3)
        momentum = _number(ctx, name, cls, cfg, "momentum", 0.99)
        expected = (["gamma"] if scale else []) + (["beta"] if center else []) \
            + ["moving_mean", "moving_variance"]
        datasets = weights.get(name, cls, expected)
        tensors = {what: _read_array(ctx, name, cls, what, ds, (n_in,))
                   for what, ds in zip(expected, datasets)}
        return LayerSpec("batch_normalization", name,
                         {"epsilon": epsilon, "momentum": momentum, "center": center,
                          "scale": scale}, tensors)
    if cls == "Normalization":
        return _convert_normalization(ctx, name, cls, cfg, n_in, weights)
    act = _activation_from_layer_config(ctx, name, cls, cfg)
    weights.get(name, cls, [])
    return LayerSpec("activation", name, {"activation": act}, {})


def _config_stat(ctx: _Context, name: str, cls: str, cfg: dict, key: str,
                 n_in: int) -> np.ndarray:
    """Normalization mean/variance given in the config: one number (broadcast) or n_in
    numbers in a (possibly nested) list."""
    value = cfg.get(key)
    if isinstance(value, list):
        flat: list[Any] = []
        stack: list[Any] = [value]
        while stack and len(flat) <= n_in:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(reversed(item))
            else:
                flat.append(item)
        if stack or len(flat) != n_in:
            raise ctx.layer_fail(name, cls, f"'{key}' in the config must be a number or "
                                 f"{n_in} numbers")
    else:
        if n_in > _MAX_BROADCAST:
            # a few bytes of JSON must not become gigabytes (the model has no weights to
            # vouch for the input width)
            raise ctx.layer_fail(name, cls, f"refusing to broadcast '{key}' to {n_in} "
                                 f"features (more than {_MAX_BROADCAST})")
        flat = [value]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in flat):
        raise ctx.layer_fail(name, cls, f"'{key}' in the config must be a number or {n_in} "
                             "numbers")
    try:
        out = np.array(flat, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        raise ctx.layer_fail(name, cls, f"'{key}' holds numbers beyond float64") from None
    if not np.all(np.isfinite(out)):
        raise ctx.layer_fail(name, cls, f"'{key}' holds NaN or Inf values")
    return np.broadcast_to(out, (n_in,)).copy() if out.size == 1 else out


def _convert_normalization(ctx: _Context, name: str, cls: str, cfg: dict, n_in: int,
                           weights: _Weights) -> LayerSpec:
    axis = cfg.get("axis", -1)
    if not _axis_is_last(axis):
        raise ctx.layer_fail(name, cls, f"axis {axis!r} is not supported (only the feature "
                             "axis -1)")
    invert = bool(cfg.get("invert", False))
    if cfg.get("mean") is not None or cfg.get("variance") is not None:
        if cfg.get("mean") is None or cfg.get("variance") is None:
            raise ctx.layer_fail(name, cls, "config gives only one of mean and variance")
        mean = _config_stat(ctx, name, cls, cfg, "mean", n_in)
        variance = _config_stat(ctx, name, cls, cfg, "variance", n_in)
        if ctx.keras_major >= 3 and ctx.precision == "float64":
            # Keras 3 makes float32 tensors of the config lists, then casts them (measured).
            mean = mean.astype(np.float32).astype(np.float64)
            variance = variance.astype(np.float32).astype(np.float64)
        weights.get(name, cls, [])
    else:
        datasets = weights.get(name, cls, ["mean", "variance", "count"])
        mean = _read_array(ctx, name, cls, "mean", datasets[0], (n_in,))
        variance = _read_array(ctx, name, cls, "variance", datasets[1], (n_in,))
    if np.any(variance < 0):
        raise ctx.layer_fail(name, cls, "variance holds negative values")
    return LayerSpec("normalization", name, {"epsilon": _KERAS_EPSILON, "invert": invert},
                     {"mean": mean, "variance": variance})


# ---------------------------------------------------------------------------------------------
# containers


def _version_text(path: str, raw: Any, where: str) -> Optional[str]:
    """The Keras version recorded in a file (None when absent), checked to be a short string."""
    if raw is None:
        return None
    if isinstance(raw, np.ndarray) and raw.shape == ():
        raw = raw[()]
    if isinstance(raw, (bytes, np.bytes_)):
        raw = bytes(raw).decode("utf-8", "replace")
    if not isinstance(raw, str) or len(raw) > 64 or not raw.isprintable() \
            or not raw.isascii():
        shown = repr(raw)
        raise ConversionError(f"{path}: {where} {shown[:60]}{'...' if len(shown) > 60 else ''} "
                              "is not a Keras version string")
    return str(raw)


def _load_json(path: str, what: str, raw: Any) -> Any:
    """Parse a JSON document of the file (``what`` names it in messages).

    Refuses text that is not UTF-8, invalid JSON, numbers Python will not convert, and
    nesting deeper than _MAX_JSON_DEPTH (the converter walks configs recursively).
    """
    try:
        if isinstance(raw, np.ndarray) and raw.shape == ():
            raw = raw[()]
        if isinstance(raw, (bytes, np.bytes_)):
            text = bytes(raw).decode("utf-8")
        elif isinstance(raw, str):
            text = raw
            text.encode("utf-8")  # h5py decodes undecodable bytes to lone surrogates
        else:
            raise ValueError(f"a {type(raw).__name__}, not text")
        value = json.loads(text)
    except UnicodeError:
        raise ConversionError(f"{path}: {what} is not UTF-8 text") from None
    except RecursionError:
        raise ConversionError(f"{path}: {what} is nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        detail = str(exc)
        detail = detail if len(detail) <= 160 else detail[:160] + "..."
        raise ConversionError(f"{path}: {what} is not valid JSON ({detail})") from None
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > _MAX_JSON_DEPTH:
            raise ConversionError(f"{path}: {what} is nested more than {_MAX_JSON_DEPTH} levels "
                                  "deep (not a Keras model config)")
        if isinstance(node, dict):
            for key, item in node.items():
                if any(0xD800 <= ord(c) <= 0xDFFF for c in key):
                    raise ConversionError(f"{path}: {what} holds a lone surrogate (\\udXXX) "
                                          "in a key")
                stack.append((item, depth + 1))
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
        elif isinstance(node, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in node):
            raise ConversionError(f"{path}: {what} holds a string with a lone surrogate "
                                  "(\\udXXX escape), which is not text")
    return value


def _keras_major(version: Optional[str], config: Any) -> int:
    if version is not None:
        match = re.match(r"\s*(\d{1,4})(?!\d)", version)
        if match:
            return int(match.group(1))
    # No version recorded: Keras 2 configs carry 'batch_input_shape', Keras 3 'batch_shape'.
    return 2 if "batch_input_shape" in json.dumps(config) else 3


def _build_spec(ctx: _Context, config: Any, weights_root: Any, layout: str,
                source_format: str, version: Optional[str]) -> ModelSpec:
    cls, cfg = _model_config(ctx, config)
    body, input_layer = _chain(ctx, cls, cfg)
    if not body:
        raise ctx.fail("model has no layers after its input")
    n_inputs = _input_width(ctx, cfg, input_layer, body)
    ctx.precision = _precision(ctx, body, input_layer)
    all_layers = cfg.get("layers", [])
    weights = _Weights(ctx, weights_root, layout, all_layers)
    layers: list[LayerSpec] = []
    n = n_inputs
    for layer in body:
        spec_layer = _convert_layer(ctx, layer, n, weights)
        layers.append(spec_layer)
        n = spec_layer.n_outputs(n)
    dtype = np.float32 if ctx.precision == "float32" else np.float64
    for spec_layer in layers:
        spec_layer.tensors = {k: np.asarray(v, dtype=np.float64).astype(dtype)
                              for k, v in spec_layer.tensors.items()}
    # a file name that is not UTF-8 reaches Python as surrogates: keep it printable
    source = os.fsencode(Path(ctx.path).name).decode("utf-8", "backslashreplace")
    meta = [("source", source.replace("\n", " ").replace("\r", " ")),
            ("source_format", source_format)]
    if version:
        meta.append(("keras_version", str(version)))
    meta.append(("keras_model", f"{cls} {cfg.get('name', '')}".strip()))
    meta.extend(ctx.notes)
    spec = ModelSpec(precision=ctx.precision, n_inputs=n_inputs, layers=layers, meta=meta)
    try:
        validate(spec, source=ctx.path)
    except ModelFileError as exc:
        raise ConversionError(f"converted model is inconsistent: {exc}") from None
    return spec


def _read_zip(path: str) -> ModelSpec:
    import h5py

    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        for info in archive.infolist():
            if info.file_size > (1 << 28) and \
                    info.file_size > _MAX_EXPANSION * max(info.compress_size, 1):
                raise ConversionError(f"{path}: archive member '{info.filename}' unpacks to "
                                      f"{info.file_size} bytes from {info.compress_size}; "
                                      "refusing a possible decompression bomb")
        if "config.json" not in names:
            raise ConversionError(f"{path}: zip archive without config.json (not a .keras "
                                  "model file)")
        config = _load_json(path, "config.json", archive.read("config.json"))
        version = None
        if "metadata.json" in names:
            metadata = _load_json(path, "metadata.json", archive.read("metadata.json"))
            if isinstance(metadata, dict):
                version = _version_text(path, metadata.get("keras_version"),
                                        "metadata.json keras_version")
        ctx = _Context(path, _keras_major(version, config))
        if "model.weights.h5" not in names:
            raise ConversionError(f"{path}: .keras archive without model.weights.h5")
        data = archive.read("model.weights.h5")
    with h5py.File(io.BytesIO(data), "r") as weights_file:
        return _build_spec(ctx, config, weights_file, "v3", "keras", version)


def _read_h5(path: str) -> ModelSpec:
    import h5py

    with h5py.File(path, "r") as handle:
        raw = handle.attrs.get("model_config")
        if raw is None:
            raise ConversionError(f"{path}: HDF5 file without 'model_config' (a weights-only "
                                  "file, or not a Keras model)")
        config = _load_json(path, "the 'model_config' attribute", raw)
        version = _version_text(path, handle.attrs.get("keras_version"),
                                "the 'keras_version' attribute")
        ctx = _Context(path, _keras_major(version, config))
        if "model_weights" not in handle:
            raise ConversionError(f"{path}: HDF5 model file without 'model_weights'")
        return _build_spec(ctx, config, handle["model_weights"], "legacy", "h5", version)


def read_keras(path: PathLike) -> ModelSpec:
    """Read a Keras ``.keras`` or ``.h5`` model file (chosen by content) into a ModelSpec.

    Raises ConversionError naming the file (and the layer and its class, where one is at
    fault) for anything missing, unreadable, truncated or unsupported.
    """
    name = str(path)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(8)
    except OSError as exc:
        raise ConversionError(f"{name}: cannot read: {exc.strerror or exc}") from None
    try:
        if magic.startswith(ZIP_MAGIC):
            return _read_zip(name)
        if magic == HDF5_MAGIC:
            return _read_h5(name)
    except ConversionError:
        raise
    except (OSError, LookupError, ValueError, TypeError, AttributeError, ArithmeticError,
            zipfile.BadZipFile, zlib.error, struct.error, RuntimeError, EOFError) as exc:
        # Last resort for what zipfile, zlib and h5py raise on damaged containers (h5py alone
        # raises OSError, KeyError, RuntimeError, ValueError and OverflowError): the file is
        # unreadable; it never reaches the user as a traceback.
        detail = _clip(str(exc) or type(exc).__name__, 300)
        raise ConversionError(f"{name}: not a readable Keras model file ({detail})") from None
    raise ConversionError(f"{name}: not a Keras model file (neither a .keras zip archive nor "
                          "an HDF5 file)")


def _read_in_child(path: str, conn: Any) -> None:
    try:
        conn.send((True, read_keras(path)))
    except ConversionError as exc:
        conn.send((False, str(exc)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, never a traceback
        conn.send((False, f"{path}: not a readable Keras model file "
                          f"({type(exc).__name__}: {_clip(str(exc), 300)})"))
    finally:
        conn.close()


def read_keras_isolated(path: PathLike, timeout: float = READ_TIMEOUT_S) -> ModelSpec:
    """``read_keras`` in a child process with a time limit.

    A damaged HDF5 file can make libhdf5 loop forever (seen in H5Aread on bit-flipped
    attribute headers) or crash, and a path can name a FIFO or a stalled file system: the
    caller (a study's convert task, a GCM group's CLI run) gets a ConversionError naming the
    file instead of a hung or killed process.
    """
    import copy
    import multiprocessing

    name = str(path)
    if timeout <= 0:
        raise ConversionError(f"{name}: the read time limit must be > 0 s, got {timeout}")
    key = _file_identity(name)
    if key is not None and key in _ACCEPTED:     # convert, then verify, read the same file
        return copy.deepcopy(_ACCEPTED[key])
    ctx = multiprocessing.get_context("spawn")    # no inherited HDF5 or TensorFlow state
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_read_in_child, args=(name, send), daemon=True)
    child.start()
    send.close()
    try:
        if not recv.poll(timeout):
            raise ConversionError(f"{name}: reading the file did not finish within {timeout:g} s "
                                  "(a damaged HDF5 file can hang libhdf5; or the path is a "
                                  "FIFO or on a stalled file system); not converted")
        try:
            ok, payload = recv.recv()
        except EOFError:
            child.join(5)
            code = child.exitcode
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise ConversionError(f"{name}: the reader process died ({how}) on this file; "
                                  "it is damaged or not a Keras model file") from None
    finally:
        recv.close()
        if child.is_alive():
            child.kill()
        child.join()
    if not ok:
        raise ConversionError(payload)
    if key is not None:
        _ACCEPTED.clear()
        _ACCEPTED[key] = copy.deepcopy(payload)
    return payload


#: the last file read_keras_isolated accepted, by identity: a file changed since misses
_ACCEPTED: dict[tuple, ModelSpec] = {}


def _file_identity(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
