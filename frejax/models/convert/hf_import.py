"""Pretrained weights from Hugging Face-layout safetensors folders, placed into sharded params.

Supported: SigLIP / SigLIP2 vision towers (``SiglipVisionModel``, the vision half
of ``SiglipModel``) and DINOv2 backbones (``Dinov2Model``,
``Dinov2WithRegistersModel``) into ``ViT``, Qwen2 / Qwen2.5 / Llama-3 decoders into
``LLM``, and LLaVA-OneVision's projector. A DINOv2 position table is resized at
import to the configured patch grid with the bicubic resampling ``transformers``
applies at run time, so any image size that the patch size divides works.

The converter is split by concern: ``safetensors_io`` reads files, ``tensor_sources``
reads one frejax tensor's slice from a checkpoint tensor, ``hf_configs`` translates
``config.json``, ``param_maps`` maps param paths to sources, and this module places
them. Every parameter is built with ``jax.make_array_from_callback`` in the sharding
of the current mesh: each device's callback reads only its slice of the tensor, so
no host ever holds a full copy of a large model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from frejax.models.convert.hf_configs import llm_config_from_hf, vision_config_from_hf
from frejax.models.convert.param_maps import (llm_param_map, projector_param_map,
                                              vision_param_map)
from frejax.models.convert.safetensors_io import Index, SafetensorsFolder
from frejax.models.convert.tensor_sources import ParamMap, Path, Source, Stacked
from frejax.models.vit import ViT




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


def check_config(expected: dict, config: Any, key: str, folder: str) -> None:
    """Fails naming ``config.<key>.<field>`` where the config disagrees with ``config.json``."""
    for field, want in expected.items():
        if field == "rope_scaling":
            have = {k: config.rope_scaling[k] for k in want} if "rope_scaling" in config else None
            ok = have == want or (want["type"] == "none" and (have or {}).get("type") == "none")
        else:
            have = config.get(field)
            ok = (math.isclose(have, want, rel_tol=1e-9) if isinstance(want, float)
                  else have == want)
        if not ok:
            raise ValueError(
                f"config.{key}.{field} ({have!r}) does not match {folder}/config.json ({want!r})")


def load_pretrained(config: Any, params: dict) -> dict:
    """Loads ``model.{vision,llm,projector}.pretrained`` folders into ``params``.

    ``params`` is the pure-dict ``VideoMLLM`` params (``encoder``, ``llm``, ...),
    sharded or not; an empty path leaves that part as it is.
    """
    params = dict(params)
    vision_path = config.model.vision.get("pretrained", "")
    if vision_path and config.model.vision.get("family", "vit") != "vit":
        # A Qwen-VL folder: the tower with its merger (the projector) is the encoder.
        from frejax.models.convert import qwen_vl_import  # noqa: PLC0415  (imports this module)
        from frejax.models.qwen_vl import vision_config_from  # noqa: PLC0415
        folder = SafetensorsFolder(vision_path)
        want = qwen_vl_import.vision_config(folder.config)
        have = vision_config_from(config.model.vision, config.model.llm.width)
        for field in dataclasses.fields(want):
            a, b = getattr(have, field.name), getattr(want, field.name)
            if a != b and field.name not in ("rope_theta", "norm_eps"):
                raise ValueError(f"config.model.vision ({field.name} {a!r}) does not match"
                                 f" {vision_path}/config.json ({b!r})")
        params["encoder"] = load_params(folder, qwen_vl_import.vision_param_map(folder, want),
                                        params["encoder"], "encoder")
        vision_path = ""
    if vision_path:
        folder = SafetensorsFolder(vision_path)
        check_config(vision_config_from_hf(folder.config), config.model.vision, "model.vision",
                     vision_path)
        side = config.model.vision.image_size // config.model.vision.patch_size
        params["encoder"] = load_params(folder, vision_param_map(folder, (side, side)),
                                        params["encoder"], "encoder")
    llm_path = config.model.llm.get("pretrained", "")
    if llm_path:
        folder = SafetensorsFolder(llm_path)
        check_config(llm_config_from_hf(folder.config), config.model.llm, "model.llm", llm_path)
        vocab = int(params["llm"]["embedding"].shape[0])  # grown when the tokenizer adds tokens
        params["llm"] = load_params(folder, llm_param_map(folder, vocab), params["llm"], "llm")
    projector_path = config.model.projector.get("pretrained", "")
    if projector_path:
        folder = SafetensorsFolder(projector_path)
        params["projector"] = load_params(folder, projector_param_map(folder),
                                          params["projector"], "projector")
    return params


def load_vision(folder: str, image_size: int) -> Any:
    """A float32 ``ViT`` holding the weights of a SigLIP / DINOv2 folder, at ``image_size`` px.

    For tools that need the encoder alone (``frejax.studies.analyze``, the ONNX check); runs
    take theirs through ``load_pretrained``.
    """
    hf = SafetensorsFolder(folder)
    cfg = ml_collections.ConfigDict(dict(vision_config_from_hf(hf.config),
                                         image_size=image_size, remat="none", scan_layers=True,
                                         attention="auto", encode_chunk=0))
    model = ViT(cfg, rngs=nnx.Rngs(0))
    side = image_size // cfg.patch_size
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, load_params(hf, vision_param_map(hf, (side, side)),
                                                nnx.to_pure_dict(state), "encoder"))
    nnx.update(model, state)
    return model
