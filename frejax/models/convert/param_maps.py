"""frejax param paths -> ``Source``s in SigLIP, DINOv2, Qwen2/Llama and LLaVA projector checkpoints."""

from __future__ import annotations

import functools
import math

from frejax.models.convert.hf_configs import (is_dinov2, is_llava, llm_config_from_hf,
                                              vision_config_from_hf, vision_section)
from frejax.models.convert.safetensors_io import SafetensorsFolder
from frejax.models.convert.tensor_sources import (Extended, Linear, ParamMap, PatchConv,
                                                  PositionTable, Reshaped, Source, SplitBias,
                                                  Tensor)


def vision_param_map(folder: SafetensorsFolder, grid: tuple[int, int] | None = None) -> ParamMap:
    """frejax ``ViT`` param paths -> sources in a SigLIP(2) or DINOv2 checkpoint.

    ``grid``: the ViT's patch grid (DINOv2 only; default: the checkpoint's own table).
    """
    if is_dinov2(folder.config):
        return _dinov2_param_map(folder, grid)
    c = vision_config_from_hf(folder.config)
    p, d, heads = c["patch_size"], c["width"], c["heads"]
    prefix = folder.prefix_of("embeddings.patch_embedding.weight")
    emb = prefix + "embeddings."
    if len(folder.shape(emb + "patch_embedding.weight")) == 4:  # SigLIP: a conv
        patch: Source = PatchConv(emb + "patch_embedding.weight", p, 3, d)
    else:  # SigLIP2: a Linear over patches flattened in (p, p, c) order already
        patch = Linear(emb + "patch_embedding.weight", (p * p * 3,), (d,))
    m: ParamMap = {
        ("patch_embed", "kernel"): patch,
        ("patch_embed", "bias"): Tensor(emb + "patch_embedding.bias", (d,)),
        ("pos_embed",): Tensor(emb + "position_embedding.weight",
                               ((c["image_size"] // p) ** 2, d)),
    }
    if c["final_norm"]:
        m[("final_norm", "scale")] = Tensor(prefix + "post_layernorm.weight", (d,))
        m[("final_norm", "bias")] = Tensor(prefix + "post_layernorm.bias", (d,))
    hd = (heads, d // heads)
    for i in range(c["depth"]):
        hf, fj = f"{prefix}encoder.layers.{i}.", ("blocks", i)
        for norm, name in (("norm1", "layer_norm1"), ("norm2", "layer_norm2")):
            m[fj + (norm, "scale")] = Tensor(hf + name + ".weight", (d,))
            m[fj + (norm, "bias")] = Tensor(hf + name + ".bias", (d,))
        for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            m[fj + ("attn", ours, "kernel")] = Linear(hf + f"self_attn.{theirs}.weight", (d,), hd)
            m[fj + ("attn", ours, "bias")] = SplitBias(hf + f"self_attn.{theirs}.bias", hd)
        m[fj + ("attn", "out", "kernel")] = Linear(hf + "self_attn.out_proj.weight", hd, (d,))
        m[fj + ("attn", "out", "bias")] = Tensor(hf + "self_attn.out_proj.bias", (d,))
        for fc in ("fc1", "fc2"):
            shape = ((d,), (c["mlp_dim"],)) if fc == "fc1" else ((c["mlp_dim"],), (d,))
            m[fj + ("mlp", fc, "kernel")] = Linear(hf + f"mlp.{fc}.weight", *shape)
            m[fj + ("mlp", fc, "bias")] = Tensor(hf + f"mlp.{fc}.bias", shape[1])
    return m


def _dinov2_param_map(folder: SafetensorsFolder, grid: tuple[int, int] | None) -> ParamMap:
    c = vision_config_from_hf(folder.config)
    p, d, heads = c["patch_size"], c["width"], c["heads"]
    prefix = folder.prefix_of("embeddings.patch_embeddings.projection.weight")
    emb = prefix + "embeddings."
    positions = folder.shape(emb + "position_embeddings")
    side = math.isqrt(positions[1] - 1)
    if positions[0] != 1 or side * side != positions[1] - 1:
        raise ValueError(f"{folder.path}: {emb}position_embeddings has shape {positions}, expected"
                         f" (1, 1 + S*S, {d})")
    grid = tuple(grid or (side, side))
    antialias = vision_section(folder.config).get("model_type") == "dinov2_with_registers"
    table = functools.partial(PositionTable, emb + "position_embeddings", side, d, grid,
                              antialias=antialias)
    m: ParamMap = {
        ("patch_embed", "kernel"): PatchConv(emb + "patch_embeddings.projection.weight", p, 3, d),
        ("patch_embed", "bias"): Tensor(emb + "patch_embeddings.projection.bias", (d,)),
        ("pos_embed",): table(part="patches"),
        ("cls_pos",): table(part="cls"),
        ("cls_token",): Reshaped(emb + "cls_token", (1, 1, d), (1, d)),
        ("final_norm", "scale"): Tensor(prefix + "layernorm.weight", (d,)),
        ("final_norm", "bias"): Tensor(prefix + "layernorm.bias", (d,)),
    }
    if c["registers"]:
        r = c["registers"]
        m[("registers",)] = Reshaped(emb + "register_tokens", (1, r, d), (r, d))
    hd = (heads, d // heads)
    for i in range(c["depth"]):
        hf, fj = f"{prefix}encoder.layer.{i}.", ("blocks", i)
        for norm in ("norm1", "norm2"):
            m[fj + (norm, "scale")] = Tensor(hf + norm + ".weight", (d,))
            m[fj + (norm, "bias")] = Tensor(hf + norm + ".bias", (d,))
        for name in ("query", "key", "value"):
            m[fj + ("attn", name, "kernel")] = Linear(hf + f"attention.attention.{name}.weight",
                                                      (d,), hd)
            m[fj + ("attn", name, "bias")] = SplitBias(hf + f"attention.attention.{name}.bias", hd)
        m[fj + ("attn", "out", "kernel")] = Linear(hf + "attention.output.dense.weight", hd, (d,))
        m[fj + ("attn", "out", "bias")] = Tensor(hf + "attention.output.dense.bias", (d,))
        for k in (1, 2):
            m[fj + (f"scale{k}", "scale")] = Tensor(hf + f"layer_scale{k}.lambda1", (d,))
        for fc in ("fc1", "fc2"):
            shape = ((d,), (c["mlp_dim"],)) if fc == "fc1" else ((c["mlp_dim"],), (d,))
            m[fj + ("mlp", fc, "kernel")] = Linear(hf + f"mlp.{fc}.weight", *shape)
            m[fj + ("mlp", fc, "bias")] = Tensor(hf + f"mlp.{fc}.bias", shape[1])
    return m


def llm_param_map(folder: SafetensorsFolder, vocab_size: int = 0) -> ParamMap:
    """frejax ``LLM`` param paths -> sources in a Qwen2 / Llama checkpoint.

    ``vocab_size`` above the checkpoint's: the rows of tokens the tokenizer added are zero.
    """
    c = llm_config_from_hf(folder.config)
    d, heads, kv = c["width"], c["heads"], c["kv_heads"]
    hd = c["head_dim"] or d // heads
    prefix = folder.prefix_of("embed_tokens.weight")
    m: ParamMap = {
        ("embedding",): Tensor(prefix + "embed_tokens.weight", (c["vocab_size"], d)),
        ("final_norm", "scale"): Tensor(prefix + "norm.weight", (d,)),
    }
    if not c["tie_embeddings"]:
        m[("lm_head", "kernel")] = Linear(folder.prefix_of("lm_head.weight") + "lm_head.weight",
                                          (d,), (c["vocab_size"],))
    if vocab_size > c["vocab_size"]:
        m[("embedding",)] = Extended(m[("embedding",)], 0, vocab_size)
        if ("lm_head", "kernel") in m:
            m[("lm_head", "kernel")] = Extended(m[("lm_head", "kernel")], 1, vocab_size)
    elif vocab_size and vocab_size < c["vocab_size"]:
        raise ValueError(f"{folder.path}: vocab_size {vocab_size} below the checkpoint's"
                         f" {c['vocab_size']}")
    for i in range(c["depth"]):
        hf, fj = f"{prefix}layers.{i}.", ("layers", i)
        m[fj + ("attn_norm", "scale")] = Tensor(hf + "input_layernorm.weight", (d,))
        m[fj + ("mlp_norm", "scale")] = Tensor(hf + "post_attention_layernorm.weight", (d,))
        for ours, theirs, n in (("query", "q_proj", heads), ("key", "k_proj", kv),
                                ("value", "v_proj", kv)):
            m[fj + ("attn", ours, "kernel")] = Linear(hf + f"self_attn.{theirs}.weight",
                                                      (d,), (n, hd))
            if c["qkv_bias"]:
                m[fj + ("attn", ours, "bias")] = SplitBias(hf + f"self_attn.{theirs}.bias",
                                                           (n, hd))
        m[fj + ("attn", "out", "kernel")] = Linear(hf + "self_attn.o_proj.weight", (heads, hd), (d,))
        if c["qk_norm"]:
            m[fj + ("attn", "query_norm", "scale")] = Tensor(hf + "self_attn.q_norm.weight", (hd,))
            m[fj + ("attn", "key_norm", "scale")] = Tensor(hf + "self_attn.k_norm.weight", (hd,))
        for ours in ("gate", "up"):
            m[fj + ("mlp", ours, "kernel")] = Linear(hf + f"mlp.{ours}_proj.weight",
                                                     (d,), (c["mlp_dim"],))
        m[fj + ("mlp", "down", "kernel")] = Linear(hf + "mlp.down_proj.weight",
                                                   (c["mlp_dim"],), (d,))
    return m


def projector_param_map(folder: SafetensorsFolder) -> ParamMap:
    """frejax ``Projector`` param paths -> a LLaVA-OneVision ``multi_modal_projector`` and its
    ``image_newline`` (the video newline)."""
    config = folder.config
    if not is_llava(config):
        raise ValueError(f"{folder.path}: model_type {config.get('model_type')!r} has no projector;"
                         " a LLaVA-OneVision folder ('llava_onevision') has")
    act = config.get("projector_hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"llava config: projector_hidden_act {act!r}; the projector implements"
                         " 'gelu'")
    if not config.get("multimodal_projector_bias", True):
        raise ValueError("llava config: multimodal_projector_bias false is not supported")
    vision, llm = vision_config_from_hf(config)["width"], llm_config_from_hf(config)["width"]
    prefix = folder.prefix_of("multi_modal_projector.linear_1.weight") + "multi_modal_projector."
    return {
        ("fc1", "kernel"): Linear(prefix + "linear_1.weight", (vision,), (llm,)),
        ("fc1", "bias"): Tensor(prefix + "linear_1.bias", (llm,)),
        ("fc2", "kernel"): Linear(prefix + "linear_2.weight", (llm,), (llm,)),
        ("fc2", "bias"): Tensor(prefix + "linear_2.bias", (llm,)),
        ("newline",): Tensor(folder.prefix_of("image_newline") + "image_newline", (llm,)),
    }
