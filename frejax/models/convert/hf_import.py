"""Pretrained weights from Hugging Face-layout safetensors folders, placed into sharded params.

Supported: SigLIP / SigLIP2 vision towers (``SiglipVisionModel``, the vision half
of ``SiglipModel``) and DINOv2 backbones (``Dinov2Model``,
``Dinov2WithRegistersModel``) into ``ViT``, Qwen2 / Qwen2.5 / Llama-3 decoders into
``LLM``, and LLaVA-OneVision's projector. A DINOv2 position table is resized at
import to the configured patch grid with the bicubic resampling ``transformers``
applies at run time, so any image size that the patch size divides works.

The converter is split by concern: ``safetensors_io`` reads files, ``tensor_sources``
reads one frejax tensor's slice from a checkpoint tensor, ``hf_configs`` translates
``config.json``, ``param_maps`` maps param paths to sources, ``placement`` places
them, and this module puts a config's pretrained folders together. Every parameter is built with ``jax.make_array_from_callback`` in the sharding
of the current mesh: each device's callback reads only its slice of the tensor, so
no host ever holds a full copy of a large model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections
from flax import nnx

from frejax.models.convert import qwen_vl_import
from frejax.models.convert.hf_configs import llm_config_from_hf, vision_config_from_hf
from frejax.models.convert.param_maps import (llm_param_map, projector_param_map,
                                              vision_param_map)
from frejax.models.convert.placement import load_params, stack_param_map  # noqa: F401
from frejax.models.convert.safetensors_io import SafetensorsFolder
from frejax.models.qwen_vl import vision_config_from
from frejax.models.vit import ViT




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
