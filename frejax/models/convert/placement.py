"""Checkpoint tensors placed into params: each device reads only its own slice.

``load_params`` replaces the leaves of a pure-dict param tree with the tensors a
``ParamMap`` names, built with ``jax.make_array_from_callback`` in each leaf's sharding,
so no host ever holds a full copy of a large model. Every importer
(``hf_import``, ``qwen_vl_import``, ``gguf_import``) places through it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from frejax.models.convert.safetensors_io import Index, SafetensorsFolder
from frejax.models.convert.tensor_sources import ParamMap, Path, Source, Stacked


def _get(tree: Any, path: Path) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: Any, path: Path, value: Any) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _paths(tree: Any, prefix: Path = ()) -> list[Path]:
    if isinstance(tree, Mapping):
        return [p for k, v in tree.items() for p in _paths(v, prefix + (k,))]
    return [prefix]


def _is_stacked(params: Any, container: Any) -> bool:
    """Whether ``params[container]`` holds stacked layers (named children, not 0, 1, ...)."""
    layers = params.get(container) if isinstance(params, Mapping) else None
    return isinstance(layers, Mapping) and not any(isinstance(k, int) for k in layers)


def stack_param_map(param_map: ParamMap, params: Any) -> ParamMap:
    """Per-layer sources ``(container, i, ...)`` -> one ``Stacked`` source per param
    wherever ``params`` stacks that container's layers; other entries unchanged."""
    out: ParamMap = {}
    groups: dict[Path, dict[int, Source]] = {}
    for path, source in param_map.items():
        if len(path) > 2 and isinstance(path[1], int) and _is_stacked(params, path[0]):
            groups.setdefault((path[0],) + tuple(path[2:]), {})[path[1]] = source
        else:
            out[path] = source
    for path, by_layer in groups.items():
        out[path] = Stacked(tuple(by_layer[i] for i in range(len(by_layer))))
    return out


def load_params(folder: SafetensorsFolder, param_map: ParamMap, params: Any,
                where: str) -> Any:
    """Replaces the leaves of ``params`` (a pure dict, the module's subtree) with checkpoint tensors.

    Every leaf keeps its shape, dtype and sharding; each addressable shard is
    read from disk by its own callback. ``where`` names the subtree in errors.
    Returns a new dict; a leaf the checkpoint does not provide is an error.
    Stacked (scanned) layers are read layer by layer into their slice.
    """
    param_map = stack_param_map(param_map, params)
    # LoRA adapters (``lora_a`` / ``lora_b``) are new: they keep their init.
    missing = sorted(p for p in set(map(tuple, _paths(params))) - set(param_map)
                     if not str(p[-1]).startswith("lora_"))
    if missing:
        raise ValueError(f"{folder.path}: no checkpoint source for {where} params {missing[:5]}")
    out = jax.tree.map(lambda x: x, params)
    for path, source in param_map.items():
        target = _get(params, path)
        parts = source.layers if isinstance(source, Stacked) else (source,)
        bad = next((p for p in parts if folder.shape(p.name) != tuple(p.hf_shape())), None)
        name = (bad or parts[0]).name
        got = folder.shape(name)
        if bad is not None or tuple(target.shape) != tuple(source.shape()):
            raise ValueError(
                f"{folder.path}: tensor {name} has shape {got}, expected {source.hf_shape()}"
                f" for {where}.{'.'.join(map(str, path))} of shape {tuple(target.shape)};"
                f" does config.json match the model config?")
        sharding = getattr(target, "sharding", None)
        if sharding is None:  # an unplaced abstract leaf: the default device
            sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        dtype = target.dtype
        read: Callable[[Index], np.ndarray] = (
            lambda index, s=source, t=dtype: np.asarray(s.read(folder, index), dtype=t))
        _set(out, path, jax.make_array_from_callback(tuple(target.shape), sharding, read))
    return out
