"""A tiny random LLaVA-OneVision model saved as a Hugging Face folder, with a byte-level tokenizer."""

from __future__ import annotations

import json
import os

VOCAB, VIDEO_ID = 300, 299
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<video>")


def write_byte_tokenizer(folder: str) -> None:
    """A byte-level BPE without merges (256 byte symbols) and Qwen's special tokens."""
    import tokenizers  # noqa: PLC0415
    from tokenizers import decoders, pre_tokenizers  # noqa: PLC0415

    symbols = list(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(list(SPECIALS) + sorted(symbols))}
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                            for t in SPECIALS])
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, f)


def tiny_llava(folder: str, feature_layer: int = -1, *, vocab: int = VOCAB,
               tokenizer: bool = False):
    """Saves a random ``LlavaOnevisionForConditionalGeneration`` (weights at unit gain: the
    default init's near-constant logits would hide mistakes); returns (torch, model)."""
    import torch  # noqa: PLC0415  (a test requirement: missing, the test fails)
    from transformers import (LlavaOnevisionConfig,  # noqa: PLC0415
                              LlavaOnevisionForConditionalGeneration)

    torch.manual_seed(0)
    cfg = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=48,
                           intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                           image_size=70, patch_size=14, vision_use_head=False),
        text_config=dict(model_type="qwen2", vocab_size=vocab, hidden_size=32,
                         intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e6,
                         tie_word_embeddings=False),
        vision_feature_layer=feature_layer, vision_feature_select_strategy="full",
        video_token_index=vocab - 1, image_token_index=vocab - 2)
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0, 1.5 * p.shape[1] ** -0.5)
            elif p.ndim == 4:  # the patch conv
                p.normal_(0, p[0].numel() ** -0.5)
            elif name.endswith("bias") or "image_newline" in name:
                p.normal_(0, 0.5)
            else:  # norm scales
                p.normal_(1.0, 0.1)
    model.save_pretrained(folder)
    if tokenizer:
        write_byte_tokenizer(folder)
    return torch, model
