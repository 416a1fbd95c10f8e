"""Qwen2.5-VL and Qwen3-VL Hugging Face folders -> ``frejax.models.qwen_vl.QwenVL``.

Reads ``config.json`` (the layout of transformers 4 and of 5, which nests the decoder
in ``text_config``) and the safetensors shards (``visual.*`` or ``model.visual.*``;
``model.layers.*`` or ``model.language_model.layers.*``), each tensor placed in its
param's sharding by the same per-device callbacks as every other import
(``frejax.models.convert.placement.load_params``).
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import nnx

from frejax.models.convert.hf_configs import QWEN3_VL_TYPES, QWEN_VL_TYPES, llm_config_from_hf
from frejax.models.convert.placement import load_params
from frejax.models.convert.param_maps import llm_param_map
from frejax.models.convert.safetensors_io import SafetensorsFolder
from frejax.models.convert.tensor_sources import (Conv3dPatch, Linear, ParamMap, SplitBias,
                                                  Tensor)
from frejax.models.qwen_vl import QwenVL, VisionConfig


TYPES = QWEN_VL_TYPES + QWEN3_VL_TYPES
# The vision activation each family's tower implements.
_ACT = {"qwen2_5_vl": "silu", "qwen3_vl": "gelu_pytorch_tanh"}


def is_qwen_vl(config: dict) -> bool:
    return config.get("model_type") in TYPES


def family(config: dict) -> str:
    return "qwen3_vl" if config.get("model_type") in QWEN3_VL_TYPES else "qwen2_5_vl"


def vision_config(config: dict) -> VisionConfig:
    """The ``vision_config`` of a Qwen2.5-VL or Qwen3-VL ``config.json``."""
    if not is_qwen_vl(config):
        raise ValueError(f"model_type {config.get('model_type')!r}; expected one of {TYPES}")
    v, kind = config["vision_config"], family(config)
    act = v.get("hidden_act", _ACT[kind])
    if act != _ACT[kind]:
        raise ValueError(f"{kind} vision_config: hidden_act {act!r}; the tower implements"
                         f" {_ACT[kind]!r}")
    rope = v.get("rope_parameters") or {}
    common = dict(
        width=int(v["hidden_size"]), depth=int(v["depth"]), heads=int(v["num_heads"]),
        mlp_dim=int(v["intermediate_size"]), out_width=int(v["out_hidden_size"]),
        patch=int(v["patch_size"]), temporal_patch=int(v["temporal_patch_size"]),
        merge=int(v["spatial_merge_size"]), rope_theta=float(rope.get("rope_theta", 10_000.0)),
        family=kind)
    if kind == "qwen3_vl":
        side = math.isqrt(int(v["num_position_embeddings"]))
        return VisionConfig(**common, position_table=side, full_blocks=(),
                            deepstack=tuple(int(i) for i in v.get("deepstack_visual_indexes", ())))
    return VisionConfig(**common, window=int(v["window_size"]),
                        full_blocks=tuple(int(i) for i in v["fullatt_block_indexes"]))


def video_token(config: dict) -> int:
    return int(config.get("video_token_id", config.get("video_token_index")))


def tokens_per_second(config: dict) -> float:
    """Position steps per second of video (Qwen2.5-VL's temporal RoPE scale)."""
    return float(config["vision_config"].get("tokens_per_second", 2))


def _norm(m: ParamMap, ours: tuple, theirs: str, size: int, layer_norm: bool) -> None:
    m[ours + ("scale",)] = Tensor(theirs + ".weight", (size,))
    if layer_norm:
        m[ours + ("bias",)] = Tensor(theirs + ".bias", (size,))


def _dense(m: ParamMap, ours: tuple, theirs: str, n_in: tuple, n_out: tuple) -> None:
    m[ours + ("kernel",)] = Linear(theirs + ".weight", n_in, n_out)
    m[ours + ("bias",)] = (SplitBias(theirs + ".bias", n_out) if len(n_out) > 1
                           else Tensor(theirs + ".bias", n_out))


def vision_param_map(folder: SafetensorsFolder, cfg: VisionConfig) -> ParamMap:
    """``QwenVision`` param paths -> the tower's tensors (either family)."""
    prefix = folder.prefix_of("patch_embed.proj.weight")
    d, hd = cfg.width, cfg.width // cfg.heads
    qwen3 = cfg.family == "qwen3_vl"
    hidden = d * cfg.merge ** 2
    m: ParamMap = {("patch_embed", "kernel"): Conv3dPatch(
        prefix + "patch_embed.proj.weight", (d, 3, cfg.temporal_patch, cfg.patch, cfg.patch))}
    if qwen3:
        m[("patch_embed", "bias")] = Tensor(prefix + "patch_embed.proj.bias", (d,))
        m[("positions",)] = Tensor(prefix + "pos_embed.weight", (cfg.position_table ** 2, d))
    # The merger: Qwen2.5-VL's ln_q + mlp.{0,2}; Qwen3-VL's norm + linear_fc{1,2}.
    mergers = [(("merger",), prefix + "merger.", False)] + [
        (("deepstack", j), prefix + f"deepstack_merger_list.{j}.", True)
        for j in range(len(cfg.deepstack))]
    for ours, theirs, joined in mergers:
        if qwen3:
            _norm(m, ours + ("norm",), theirs + "norm", hidden if joined else d, True)
            _dense(m, ours + ("fc1",), theirs + "linear_fc1", (hidden,), (hidden,))
            _dense(m, ours + ("fc2",), theirs + "linear_fc2", (hidden,), (cfg.out_width,))
        else:
            _norm(m, ours + ("norm",), theirs + "ln_q", d, False)
            _dense(m, ours + ("fc1",), theirs + "mlp.0", (hidden,), (hidden,))
            _dense(m, ours + ("fc2",), theirs + "mlp.2", (hidden,), (cfg.out_width,))
    for i in range(cfg.depth):
        hf, fj = f"{prefix}blocks.{i}.", ("blocks", i)
        _norm(m, fj + ("norm1",), hf + "norm1", d, qwen3)
        _norm(m, fj + ("norm2",), hf + "norm2", d, qwen3)
        _dense(m, fj + ("qkv",), hf + "attn.qkv", (d,), (3, cfg.heads, hd))
        _dense(m, fj + ("out",), hf + "attn.proj", (cfg.heads, hd), (d,))
        if qwen3:
            _dense(m, fj + ("up",), hf + "mlp.linear_fc1", (d,), (cfg.mlp_dim,))
            _dense(m, fj + ("down",), hf + "mlp.linear_fc2", (cfg.mlp_dim,), (d,))
        else:
            for name in ("gate", "up"):
                _dense(m, fj + (name,), hf + f"mlp.{name}_proj", (d,), (cfg.mlp_dim,))
            _dense(m, fj + ("down",), hf + "mlp.down_proj", (cfg.mlp_dim,), (d,))
    return m


def llm_config(config: dict, **overrides: Any) -> ml_collections.ConfigDict:
    """The ``LLM`` section for the folder's decoder: its ``config.json`` keys, compute
    settings at ``model.llm``'s defaults (scanned layers, no remat, attention auto)."""
    return ml_collections.ConfigDict(dict(
        dict(scan_layers=True, remat="none", attention="auto"),
        **llm_config_from_hf(config), **overrides))


def load(path: str, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
         **llm_overrides: Any) -> QwenVL:
    """A ``QwenVL`` holding the weights of the Qwen2.5-VL or Qwen3-VL folder at ``path``."""
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
