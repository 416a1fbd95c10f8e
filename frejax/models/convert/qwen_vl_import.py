"""Qwen2.5-VL Hugging Face folders -> ``frejax.models.qwen_vl.QwenVL``.

Reads ``config.json`` (the layout of transformers 4 and of 5, which nests the decoder
in ``text_config``) and the safetensors shards (``visual.*`` or ``model.visual.*``;
``model.layers.*`` or ``model.language_model.layers.*``), each tensor placed in its
param's sharding by the same per-device callbacks as every other import
(``frejax.models.convert.hf_import.load_params``).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import nnx

from frejax import config_lib
from frejax.models.convert.hf_configs import QWEN_VL_TYPES, llm_config_from_hf
from frejax.models.convert.hf_import import load_params
from frejax.models.convert.param_maps import llm_param_map
from frejax.models.convert.safetensors_io import SafetensorsFolder
from frejax.models.convert.tensor_sources import (Conv3dPatch, Linear, ParamMap, SplitBias,
                                                  Tensor)
from frejax.models.qwen_vl import QwenVL, VisionConfig


def is_qwen_vl(config: dict) -> bool:
    return config.get("model_type") in QWEN_VL_TYPES


def vision_config(config: dict) -> VisionConfig:
    """The ``vision_config`` of a Qwen2.5-VL ``config.json``."""
    if not is_qwen_vl(config):
        raise ValueError(f"model_type {config.get('model_type')!r}; expected one of {QWEN_VL_TYPES}")
    v = config["vision_config"]
    act = v.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"qwen_vl vision_config: hidden_act {act!r}; the tower implements 'silu'")
    rope = v.get("rope_parameters") or {}
    return VisionConfig(
        width=int(v["hidden_size"]), depth=int(v["depth"]), heads=int(v["num_heads"]),
        mlp_dim=int(v["intermediate_size"]), out_width=int(v["out_hidden_size"]),
        patch=int(v["patch_size"]), temporal_patch=int(v["temporal_patch_size"]),
        merge=int(v["spatial_merge_size"]), window=int(v["window_size"]),
        full_blocks=tuple(int(i) for i in v["fullatt_block_indexes"]),
        rope_theta=float(rope.get("rope_theta", 10_000.0)))


def video_token(config: dict) -> int:
    return int(config.get("video_token_id", config.get("video_token_index")))


def tokens_per_second(config: dict) -> float:
    """Position steps per second of video (Qwen2.5-VL's temporal RoPE scale)."""
    return float(config["vision_config"].get("tokens_per_second", 2))


def vision_param_map(folder: SafetensorsFolder, cfg: VisionConfig) -> ParamMap:
    """``QwenVision`` param paths -> the tower's tensors."""
    prefix = folder.prefix_of("patch_embed.proj.weight")
    d, hd = cfg.width, cfg.width // cfg.heads
    heads3 = (3, cfg.heads, hd)
    m: ParamMap = {
        ("patch_embed", "kernel"): Conv3dPatch(
            prefix + "patch_embed.proj.weight",
            (d, 3, cfg.temporal_patch, cfg.patch, cfg.patch)),
        ("merger", "norm", "scale"): Tensor(prefix + "merger.ln_q.weight", (d,)),
    }
    hidden = d * cfg.merge ** 2
    for ours, theirs, shape in (("fc1", "0", (hidden, hidden)), ("fc2", "2", (hidden, cfg.out_width))):
        m[("merger", ours, "kernel")] = Linear(prefix + f"merger.mlp.{theirs}.weight",
                                               (shape[0],), (shape[1],))
        m[("merger", ours, "bias")] = Tensor(prefix + f"merger.mlp.{theirs}.bias", (shape[1],))
    for i in range(cfg.depth):
        hf, fj = f"{prefix}blocks.{i}.", ("blocks", i)
        m[fj + ("norm1", "scale")] = Tensor(hf + "norm1.weight", (d,))
        m[fj + ("norm2", "scale")] = Tensor(hf + "norm2.weight", (d,))
        m[fj + ("qkv", "kernel")] = Linear(hf + "attn.qkv.weight", (d,), heads3)
        m[fj + ("qkv", "bias")] = SplitBias(hf + "attn.qkv.bias", heads3)
        m[fj + ("out", "kernel")] = Linear(hf + "attn.proj.weight", (cfg.heads, hd), (d,))
        m[fj + ("out", "bias")] = Tensor(hf + "attn.proj.bias", (d,))
        for name in ("gate", "up"):
            m[fj + (name, "kernel")] = Linear(hf + f"mlp.{name}_proj.weight", (d,), (cfg.mlp_dim,))
            m[fj + (name, "bias")] = Tensor(hf + f"mlp.{name}_proj.bias", (cfg.mlp_dim,))
        m[fj + ("down", "kernel")] = Linear(hf + "mlp.down_proj.weight", (cfg.mlp_dim,), (d,))
        m[fj + ("down", "bias")] = Tensor(hf + "mlp.down_proj.bias", (d,))
    return m


def llm_config(config: dict, **overrides: Any) -> ml_collections.ConfigDict:
    """``model.llm`` for the folder's decoder (the base config's other keys as they are)."""
    cfg = config_lib.base_config().model.llm
    cfg.update(llm_config_from_hf(config))
    cfg.update(overrides)
    return cfg


def load(path: str, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
         **llm_overrides: Any) -> QwenVL:
    """A ``QwenVL`` holding the weights of the Qwen2.5-VL folder at ``path``."""
    folder = SafetensorsFolder(path)
    vision = vision_config(folder.config)
    llm_cfg = llm_config(folder.config, **llm_overrides)
    model = nnx.eval_shape(lambda: QwenVL(vision, llm_cfg, video_token(folder.config),
                                          rngs=nnx.Rngs(0), dtype=dtype,
                                          param_dtype=param_dtype))
    graph, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    params["encoder"] = load_params(folder, vision_param_map(folder, vision), params["encoder"],
                                    "encoder")
    params["llm"] = load_params(folder, llm_param_map(folder), params["llm"], "llm")
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graph, state)
