"""Hugging Face ``config.json`` -> frejax ``model`` config keys (vision tower, LLM, LLaVA)."""

from __future__ import annotations

import math


def vision_section(config: dict) -> dict:
    """The vision part of a SigLIP / SigLIP2 ``config.json`` (full model or tower)."""
    return config.get("vision_config", config)


DINOV2_TYPES = ("dinov2", "dinov2_with_registers")


def is_dinov2(config: dict) -> bool:
    return vision_section(config).get("model_type") in DINOV2_TYPES


def vision_config_from_hf(config: dict) -> dict:
    """``config.json`` of a SigLIP(2) tower or a DINOv2 backbone -> ``model.vision`` keys.

    DINOv2 sets no ``image_size``: its position table is resized to any grid.
    """
    c = vision_section(config)
    if c.get("model_type") in DINOV2_TYPES:
        return _dinov2_config(c)
    keys = _siglip_config(c)
    if is_llava(config):
        keys.update(_llava_vision_layers(config, keys["depth"]))
    return keys


def is_llava(config: dict) -> bool:
    """A LLaVA-OneVision / LLaVA-Video ``config.json`` (vision tower + projector + LLM)."""
    return config.get("model_type") == "llava_onevision"


def _llava_vision_layers(config: dict, depth: int) -> dict:
    """LLaVA reads ``hidden_states[vision_feature_layer]``: the output of a block, before the
    tower's final norm. The ViT runs the blocks up to that one only."""
    layer = config.get("vision_feature_layer", -1)
    if not isinstance(layer, int):
        raise ValueError(f"llava config: vision_feature_layer {layer!r}; one layer is supported")
    strategy = config.get("vision_feature_select_strategy", "full")
    if strategy != "full":
        raise ValueError(f"llava config: vision_feature_select_strategy {strategy!r}; SigLIP has no"
                         " class token to drop, 'full' is supported")
    used = depth + 1 + layer if layer < 0 else layer
    if not 1 <= used <= depth:
        raise ValueError(f"llava config: vision_feature_layer {layer} outside 1..{depth} blocks")
    return dict(depth=used, final_norm=False)


def _siglip_config(c: dict) -> dict:
    act = c.get("hidden_act", "gelu_pytorch_tanh")
    if act != "gelu_pytorch_tanh":
        raise ValueError(f"vision config: hidden_act {act!r}; the ViT implements gelu_pytorch_tanh")
    patch = int(c.get("patch_size", 16))
    if "num_patches" in c:  # SigLIP2 (NaFlex): a square grid of position embeddings
        side = math.isqrt(int(c["num_patches"]))
        image_size = side * patch
    else:
        image_size = int(c.get("image_size", 224))
    return dict(image_size=image_size, patch_size=patch, width=int(c.get("hidden_size", 768)),
                depth=int(c.get("num_hidden_layers", 12)),
                heads=int(c.get("num_attention_heads", 12)),
                mlp_dim=int(c.get("intermediate_size", 3072)),
                norm_eps=float(c.get("layer_norm_eps", 1e-6)), cls_token=False, registers=0,
                layer_scale=False, gelu_approximate=True, pixel_norm="symmetric",
                final_norm=True)


def _dinov2_config(c: dict) -> dict:
    act = c.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"vision config: hidden_act {act!r}; the DINOv2 ViT implements 'gelu'")
    if c.get("use_swiglu_ffn"):
        raise ValueError("vision config: use_swiglu_ffn (DINOv2-g) is not supported")
    if not c.get("qkv_bias", True):
        raise ValueError("vision config: qkv_bias false is not supported")
    width = int(c.get("hidden_size", 768))
    return dict(patch_size=int(c.get("patch_size", 14)), width=width,
                depth=int(c.get("num_hidden_layers", 12)),
                heads=int(c.get("num_attention_heads", 12)),
                mlp_dim=int(width * float(c.get("mlp_ratio", 4))),
                norm_eps=float(c.get("layer_norm_eps", 1e-6)), cls_token=True,
                registers=int(c.get("num_register_tokens", 0)), layer_scale=True,
                gelu_approximate=False, pixel_norm="imagenet", final_norm=True)


def llm_config_from_hf(config: dict) -> dict:
    """``config.json`` of a Qwen2 / Qwen2.5 / Llama(-3) decoder (or a LLaVA model's
    ``text_config``) -> ``model.llm`` keys."""
    if is_llava(config):
        config = config["text_config"]
    sections: list[int] = []
    interleaved = config.get("model_type") in QWEN3_VL_TYPES
    if config.get("model_type") in QWEN_VL_TYPES + QWEN3_VL_TYPES:
        config, sections = _qwen_vl_text(config)
    kind = config.get("model_type")
    if kind not in ("qwen2", "qwen3", "llama"):
        raise ValueError(f"llm config: model_type {kind!r}; supported: 'qwen2', 'qwen3', 'llama'")
    if kind == "qwen3" and config.get("attention_bias"):
        raise ValueError("llm config: Qwen3 with attention_bias is not supported")
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"llm config: hidden_act {config['hidden_act']!r}; SwiGLU needs 'silu'")
    if kind == "llama" and (config.get("attention_bias") or config.get("mlp_bias")):
        raise ValueError("llm config: Llama with attention_bias / mlp_bias is not supported")
    if kind == "qwen2" and config.get("use_sliding_window"):
        raise ValueError("llm config: Qwen2 sliding-window attention is not supported")
    # transformers >= 5 nests rope settings in rope_parameters; earlier: rope_theta + rope_scaling.
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = float(config.get("rope_theta") or rope.get("rope_theta", 10_000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = dict(type="none", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position=8192)
    if rope_type == "llama3":
        scaling.update(type="llama3", factor=float(rope["factor"]),
                       low_freq_factor=float(rope["low_freq_factor"]),
                       high_freq_factor=float(rope["high_freq_factor"]),
                       original_max_position=int(rope["original_max_position_embeddings"]))
    elif rope_type != "default":
        raise ValueError(f"llm config: rope type {rope_type!r}; supported: default, llama3")
    if sections and rope_type == "mrope":   # transformers < 5 names M-RoPE a rope type
        rope_type = "default"
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or 0)
    if head_dim == int(config["hidden_size"]) // heads:
        head_dim = 0
    return dict(vocab_size=int(config["vocab_size"]), width=int(config["hidden_size"]),
                depth=int(config["num_hidden_layers"]), heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads), head_dim=head_dim,
                mlp_dim=int(config["intermediate_size"]), rope_theta=theta,
                qkv_bias=kind == "qwen2", tie_embeddings=bool(config.get("tie_word_embeddings")),
                norm_eps=float(config.get("rms_norm_eps", 1e-6)), rope_scaling=scaling,
                mrope_sections=tuple(sections), mrope_interleaved=interleaved,
                qk_norm=kind == "qwen3")


QWEN_VL_TYPES = ("qwen2_5_vl", "qwen2_5_vl_text")
QWEN3_VL_TYPES = ("qwen3_vl", "qwen3_vl_text")


def _qwen_vl_text(config: dict) -> tuple[dict, list[int]]:
    """A Qwen2.5-VL or Qwen3-VL ``config.json`` (``text_config`` in transformers >= 5 and
    in Qwen3-VL, top level in Qwen2.5-VL before) -> its decoder's keys as a Qwen2 or
    Qwen3 config, and the M-RoPE sections."""
    qwen3 = config.get("model_type") in QWEN3_VL_TYPES
    text = dict(config.get("text_config") or config)
    for key in ("tie_word_embeddings", "vocab_size"):
        if key not in text and key in config:
            text[key] = config[key]
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    sections = [int(n) for n in rope.get("mrope_section", [])]
    if not sections:
        raise ValueError(f"llm config: model_type {config.get('model_type')!r} without"
                         " rope mrope_section")
    text["model_type"] = "qwen3" if qwen3 else "qwen2"
    return text, sections


def llava_model_config(config: dict) -> dict:
    """A LLaVA-OneVision ``config.json`` -> ``model`` keys: tower, projector (projector first,
    2x2 bilinear pooling, the newline) and LLM, as ``transformers`` runs videos."""
    if not is_llava(config):
        raise ValueError(f"model_type {config.get('model_type')!r}; expected 'llava_onevision'")
    return dict(vision=vision_config_from_hf(config), llm=llm_config_from_hf(config),
                projector=dict(hidden=0, order="project_then_compress", pool=2), newline=True)
