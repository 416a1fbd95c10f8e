"""Pieces shared by the frejax configs: arg parsing and the variants an arg selects.

A config file defines ``get_config(arg=None)``; ``arg`` is the string after the
colon in ``--config=configs/long_video.py:scale=pod,smoke`` and is parsed by
``parse_arg`` into ``key=value`` pairs and bare flags.
"""

from __future__ import annotations

import json
import os

import ml_collections

from frejax import compression
from frejax.models.convert import hf_configs


def parse_arg(arg: str | None, **defaults):
    """Parses ``"a=1,b=x,flag"`` into a ConfigDict over ``defaults``.

    Values are cast to the type of the default; bare words set a bool default
    to True. Unknown keys raise, naming the key and the allowed ones.
    """
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(
                f"config arg: unknown key {key!r}; allowed: {sorted(defaults)}")
        default = defaults[key]
        if not sep:
            if not isinstance(default, bool):
                raise ValueError(f"config arg: {key!r} needs a value ({key}=...)")
            out[key] = True
        elif isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config arg: {key}={value!r} is not a boolean")
            out[key] = value.lower() in ("true", "1")
        else:
            try:
                out[key] = type(default)(value)
            except ValueError as e:
                raise ValueError(f"config arg: {key}={value!r}: {e}") from None
    return out


def apply_smoke(c: ml_collections.ConfigDict) -> None:
    """A seconds-long variant for tests: tiny model, few steps, tiny eval."""
    c.data.num_frames = min(c.data.num_frames, 8)
    c.model.vision.update(width=32, depth=1, heads=2, mlp_dim=64)
    c.model.llm.update(width=32, depth=1, heads=2, kv_heads=1, mlp_dim=64)
    c.train.update(batch_size=8, num_steps=4, log_every=2, checkpoint_every=2, progress_bar=False)
    c.optim.warmup_steps = 2
    c.eval.update(batch_size=8, num_examples=12)


def apply_pod_scale(c: ml_collections.ConfigDict) -> None:
    """A pretraining-scale description: SigLIP-So400m-sized encoder, 7B-class LLM."""
    c.data.update(num_frames=64, image_size=378, max_text_len=2048, max_answer_len=256,
                  worker_count=8, read_threads=8)
    c.model.vision.update(image_size=378, patch_size=14, width=1152, depth=27, heads=16,
                          mlp_dim=4304, remat="full", encode_chunk=16)
    c.model.llm.update(vocab_size=152_064, width=3584, depth=28, heads=28, kv_heads=4,
                       head_dim=128, mlp_dim=18_944, rope_theta=1_000_000.0, qkv_bias=True,
                       tie_embeddings=False, remat="full")
    if compression.get(c.compressor.name).section == "fre_res":  # Fre-Res or an ablation
        c.compressor.fre_res.absorber.heads = 16  # head width 72 at encoder width 1152
    c.optim.update(learning_rate=2e-5, warmup_steps=500)
    c.train.update(batch_size=256, num_steps=20_000, dtype="auto", checkpoint_every=500)
    c.eval.update(batch_size=64, num_examples=2000, max_new_tokens=256)
    c.mesh.shape = (-1, 16, 4)


def apply_pretrained(c: ml_collections.ConfigDict, vision: str = "", llm: str = "") -> None:
    """Points the model at local Hugging Face folders; their config.json sets the architecture.

    ``vision``: a SigLIP / SigLIP2 / DINOv2 folder; ``llm``: a Qwen2 / Qwen2.5 / Llama-3
    folder (its ``tokenizer.json``, when there, becomes the tokenizer).
    """
    def read(folder: str, what: str) -> dict:
        path = os.path.join(folder, "config.json")
        if not os.path.isfile(path):
            raise ValueError(f"config arg {what}={folder}: no config.json in that folder")
        with open(path) as f:
            return json.load(f)

    if vision:
        c.model.vision.update(hf_configs.vision_config_from_hf(read(vision, "vision")),
                              pretrained=vision)
        if c.model.vision.image_size % c.model.vision.patch_size:
            # DINOv2 resizes its position table to any grid: 224 px, the resolution it
            # reports at (16 x 16 patches of 14 px).
            c.model.vision.image_size = 16 * c.model.vision.patch_size
        c.data.image_size = c.model.vision.image_size
    if llm:
        llm_cfg = hf_configs.llm_config_from_hf(read(llm, "llm"))
        c.model.llm.rope_scaling.update(llm_cfg.pop("rope_scaling"))
        c.model.llm.update(llm_cfg, pretrained=llm)
        if os.path.isfile(os.path.join(llm, "tokenizer.json")):
            c.data.update(tokenizer="huggingface", tokenizer_path=llm)
            # A subword tokenizer spells one-word answers in a few tokens.
            c.eval.max_new_tokens = max(c.eval.max_new_tokens, 4)


# lmms-eval's LLaVA-OneVision prompt (conversation template "qwen_1_5", the visual
# placeholder then a newline then the question); the answer follows the last line.
LLAVA_PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\n<video>\n{question}<|im_end|>\n<|im_start|>assistant\n")


def apply_llava(c: ml_collections.ConfigDict, folder: str) -> None:
    """Points the whole model at a LLaVA-OneVision / LLaVA-Video folder (Hugging Face
    ``llava_onevision`` layout): SigLIP tower up to the feature layer, projector, video
    pooling and newline, Qwen2 LLM, tokenizer and chat template, all from its files."""
    if not folder:
        return
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"config arg llava={folder}: no config.json in that folder")
    with open(path) as f:
        keys = hf_configs.llava_model_config(json.load(f))
    c.model.vision.update(keys["vision"], pretrained=folder)
    llm_cfg = keys["llm"]
    c.model.llm.rope_scaling.update(llm_cfg.pop("rope_scaling"))
    c.model.llm.update(llm_cfg, pretrained=folder)
    c.model.projector.update(keys["projector"], pretrained=folder)
    c.model.newline = keys["newline"]
    c.data.image_size = c.model.vision.image_size
    c.data.prompt_template = LLAVA_PROMPT
    if os.path.isfile(os.path.join(folder, "tokenizer.json")):
        c.data.update(tokenizer="huggingface", tokenizer_path=folder)


QWEN_PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
               "<|im_start|>user\n<|vision_start|><video><|vision_end|>{question}<|im_end|>\n"
               "<|im_start|>assistant\n")
# Seconds between sampled frames that Qwen2.5-VL's temporal positions assume: lmms-eval
# samples its videos at 2 fps.
QWEN_FRAME_SECONDS = 0.5


# The shape of Qwen2.5-VL-7B-Instruct (its config.json), for compile checks without weights.
QWEN2_5_VL_7B = dict(
    model_type="qwen2_5_vl", tie_word_embeddings=False,
    text_config=dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                     num_hidden_layers=28, num_key_value_heads=4, rms_norm_eps=1e-6,
                     vocab_size=152064, rope_parameters=dict(
                         rope_type="default", rope_theta=1e6, mrope_section=[16, 24, 24])),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                       out_hidden_size=3584, patch_size=14, spatial_merge_size=2,
                       temporal_patch_size=2, window_size=112, tokens_per_second=2,
                       fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu"))


def apply_qwen_vl(c: ml_collections.ConfigDict, folder: str, config: dict | None = None) -> None:
    """Points the model at a Qwen2.5-VL folder (Hugging Face ``qwen2_5_vl`` layout): the
    tower with its merger as the encoder, the multimodal-RoPE LLM, tokenizer and chat
    template, all from its files. ``config`` instead of a folder: that ``config.json``'s
    shape with random weights (for compile checks)."""
    from frejax.models.convert import qwen_vl_import  # noqa: PLC0415  (model code: lazy)

    if config is None:
        path = os.path.join(folder, "config.json")
        if not os.path.isfile(path):
            raise ValueError(f"config arg qwen={folder}: no config.json in that folder")
        with open(path) as f:
            config = json.load(f)
    if not qwen_vl_import.is_qwen_vl(config):
        raise ValueError(f"config arg qwen={folder}: model_type {config.get('model_type')!r},"
                         f" expected one of {qwen_vl_import.TYPES}")
    v = qwen_vl_import.vision_config(config)
    c.model.vision.update(
        family=v.family, width=v.width, depth=v.depth, heads=v.heads, mlp_dim=v.mlp_dim,
        patch_size=v.patch, temporal_patch=v.temporal_patch, merge=v.merge, window=v.window,
        full_blocks=v.full_blocks, position_table=v.position_table, deepstack=v.deepstack,
        image_size=c.data.image_size, pretrained=folder,
        mrope_time_step=(qwen_vl_import.tokens_per_second(config) * v.temporal_patch
                         * QWEN_FRAME_SECONDS))
    llm_cfg = hf_configs.llm_config_from_hf(config)
    c.model.llm.rope_scaling.update(llm_cfg.pop("rope_scaling"))
    c.model.llm.update(llm_cfg, pretrained=folder)
    if not folder:
        return
    c.data.prompt_template = QWEN_PROMPT
    if os.path.isfile(os.path.join(folder, "tokenizer.json")):
        c.data.update(tokenizer="huggingface", tokenizer_path=folder)


def apply_stage(c: ml_collections.ConfigDict, stage: int, lora_rank: int = 0,
                after: str = "") -> None:
    """Training recipes for a pretrained encoder and LLM.

    stage 0: everything trains (the from-scratch default); stage 1: frozen
    encoder and LLM, train the compressor (its absorber) and the projector;
    stage 2: the LLM unfrozen as well, at a tenth of the learning rate, or with
    ``lora_rank > 0`` its base weights frozen and LoRA adapters trained instead.
    ``after``: the stage-1 run (workdir) whose compressor and projector stage 2 starts
    from (``config.init``); the encoder and LLM come from their pretrained folders.
    """
    if after:
        if stage != 2:
            raise ValueError("config arg: after=<stage-1 workdir> needs stage=2")
        c.init.update(checkpoint=after, groups="compressor,projector")
    if stage == 0:
        return
    if stage == 1:
        c.optim.freeze = "encoder,llm"
    elif stage == 2:
        c.optim.freeze = "encoder,llm" if lora_rank else "encoder"
        c.optim.lr_multipliers.llm = 0.1
    else:
        raise ValueError(f"config arg: stage must be 0, 1 or 2, got {stage}")
    if lora_rank:
        if stage != 2:
            raise ValueError("config arg: lora needs stage=2 (stage 1 keeps the LLM frozen)")
        c.model.llm.lora.rank = lora_rank


def parse_video_arg(arg: str | None, *, frames: int, ratio: float) -> ml_collections.ConfigDict:
    """The arg keys of the video configs, with the file's own frames and ratio as defaults."""
    return parse_arg(arg, scale="cpu", smoke=False, ratio=ratio, compressor="fre_res",
                     frames=frames, stage=0, lora=0, after="", vision="", llm="", llava="")


def apply_variants(c: ml_collections.ConfigDict, args: ml_collections.ConfigDict) -> None:
    """What the arg changes after the file set its experiment: scale, smoke, pretrained, stage."""
    if args.scale == "pod":
        apply_pod_scale(c)
    elif args.scale != "cpu":
        raise ValueError(f"config arg: scale must be 'cpu' or 'pod', got {args.scale!r}")
    if args.smoke:
        apply_smoke(c)
    apply_pretrained(c, args.vision, args.llm)
    apply_llava(c, args.llava)
    apply_stage(c, args.stage, args.lora, args.after)
