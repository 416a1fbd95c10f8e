"""Pretrained-weight import: the safetensors reader, layout maps, sharded placement, and
numerical parity with the PyTorch reference implementations in ``transformers``.

The parity tests build tiny random Hugging Face models, save them as safetensors
(single file and sharded), load them into frejax modules and compare outputs in
float32. They need CPU torch and transformers (requirements-test.txt) and are
skipped only where those are absent.
"""

import json
import os
import struct

import jax
import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from frejax import config_lib
from frejax import sharding
from frejax.models.convert import hf_import
from frejax.models.convert import hf_configs
from frejax.models.convert import param_maps
from frejax.models.convert import safetensors_io
from frejax.models.convert import tensor_sources
from frejax.models.llm import LLM
from frejax.models.vit import ViT, normalize_pixels, patchify

ATOL = 1e-4


def _write_safetensors(path, tensors):
    """Writes the safetensors format by hand (so bfloat16 needs no torch)."""
    names = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16"}
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array).tobytes()
        header[name] = dict(dtype=names[array.dtype], shape=list(array.shape),
                            data_offsets=[offset, offset + len(blob)])
        offset += len(blob)
        blobs.append(blob)
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def _folder(tmp_path, tensors, config=None, shards=1):
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config or {}))
    names = sorted(tensors)
    if shards == 1:
        _write_safetensors(path / "model.safetensors", tensors)
    else:
        weight_map = {}
        for s in range(shards):
            file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[s::shards]}
            _write_safetensors(path / file, part)
            weight_map.update({n: file for n in part})
        (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return safetensors_io.SafetensorsFolder(str(path))


# ----------------------------------------------------------------------------
# Reader and layout maps (no torch needed).
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("shards", [1, 3])
def test_reader_matches_safe_open_and_reads_bfloat16(tmp_path, shards):
    rng = np.random.default_rng(0)
    tensors = {f"w{i}": rng.normal(size=(5, 7)).astype(np.float32) for i in range(4)}
    tensors["half"] = rng.normal(size=(6,)).astype(ml_dtypes.bfloat16)
    folder = _folder(tmp_path, tensors, shards=shards)
    assert sorted(folder.keys()) == sorted(tensors)
    for name, want in tensors.items():
        np.testing.assert_array_equal(folder.array(name), want)
        assert folder.shape(name) == want.shape
    np.testing.assert_array_equal(folder.array("w1")[1:3, 2:6], tensors["w1"][1:3, 2:6])
    if shards == 1:  # the library reader agrees on what it can represent
        from safetensors import safe_open
        with safe_open(os.path.join(folder.path, "model.safetensors"), framework="numpy") as f:
            np.testing.assert_array_equal(f.get_slice("w2")[1:4], folder.array("w2")[1:4])


def test_missing_files_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        safetensors_io.SafetensorsFolder(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        safetensors_io.SafetensorsFolder(str(tmp_path))


def test_patch_conv_reordered_to_dense_over_flattened_patches(tmp_path):
    """A stride-p conv (out, c, p, p) equals patchify + the imported Dense kernel."""
    p, c, out = 4, 3, 5
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(out, c, p, p)).astype(np.float32)
    images = rng.normal(size=(2, 8, 12, c)).astype(np.float32)
    folder = _folder(tmp_path, {"conv": weight})
    source = tensor_sources.PatchConv("conv", p, c, out)
    kernel = source.read(folder, (slice(None), slice(None)))
    assert kernel.shape == (p * p * c, out)
    # The convolution written out: out[n, gy, gx, o] = sum img[n, gy*p+i, gx*p+j, ch] w[o, ch, i, j].
    blocks = images.reshape(2, 2, p, 3, p, c)
    conv = np.einsum("nyixjc,ocij->nyxo", blocks, weight).reshape(2, 6, out)
    np.testing.assert_allclose(np.asarray(patchify(jnp.asarray(images), p)) @ kernel, conv,
                               atol=1e-5)
    # A slice of the output columns reads the same values as the full kernel.
    np.testing.assert_array_equal(source.read(folder, (slice(None), slice(1, 4))), kernel[:, 1:4])


def test_linear_slices_of_head_split_kernels(tmp_path):
    """(out=H*D, in) -> (in, H, D) and (in=H*D, out) -> (H, D, out), read slice by slice."""
    rng = np.random.default_rng(2)
    w_q = rng.normal(size=(4 * 3, 6)).astype(np.float32)   # heads 4, head_dim 3, embed 6
    w_o = rng.normal(size=(6, 4 * 3)).astype(np.float32)
    folder = _folder(tmp_path, {"q": w_q, "o": w_o})
    q = tensor_sources.Linear("q", (6,), (4, 3))
    o = tensor_sources.Linear("o", (4, 3), (6,))
    full_q = w_q.T.reshape(6, 4, 3)
    full_o = w_o.T.reshape(4, 3, 6)
    np.testing.assert_array_equal(q.read(folder, (slice(None),) * 3), full_q)
    np.testing.assert_array_equal(o.read(folder, (slice(None),) * 3), full_o)
    index = (slice(2, 5), slice(1, 3), slice(None))
    np.testing.assert_array_equal(q.read(folder, index), full_q[index])
    index = (slice(2, 4), slice(0, 2), slice(3, 6))
    np.testing.assert_array_equal(o.read(folder, index), full_o[index])


def test_import_places_every_leaf_in_its_mesh_sharding(tmp_path):
    """Loaded straight into fsdp x tensor shardings; equal to the single-device load."""
    rng = np.random.default_rng(3)
    cfg = dict(model_type="qwen2", vocab_size=16, hidden_size=8, intermediate_size=16,
               num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
               rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False)
    d, hd = 8, 2
    tensors = {"model.embed_tokens.weight": (16, d), "model.norm.weight": (d,),
               "lm_head.weight": (16, d)}
    pre = "model.layers.0."
    tensors.update({pre + "input_layernorm.weight": (d,),
                    pre + "post_attention_layernorm.weight": (d,),
                    pre + "self_attn.q_proj.weight": (4 * hd, d), pre + "self_attn.q_proj.bias": (8,),
                    pre + "self_attn.k_proj.weight": (2 * hd, d), pre + "self_attn.k_proj.bias": (4,),
                    pre + "self_attn.v_proj.weight": (2 * hd, d), pre + "self_attn.v_proj.bias": (4,),
                    pre + "self_attn.o_proj.weight": (d, 4 * hd),
                    pre + "mlp.gate_proj.weight": (16, d), pre + "mlp.up_proj.weight": (16, d),
                    pre + "mlp.down_proj.weight": (d, 16)})
    tensors = {k: rng.normal(size=s).astype(np.float32) for k, s in tensors.items()}
    folder = _folder(tmp_path, tensors, cfg, shards=2)
    llm_cfg = _llm_section(hf_configs.llm_config_from_hf(cfg))
    param_map = param_maps.llm_param_map(folder)

    mesh = sharding.make_mesh((2, 2, 2))
    with jax.set_mesh(mesh), sharding.axis_rules(config_lib.DEFAULT_RULES):
        abstract = nnx.eval_shape(lambda: LLM(llm_cfg, rngs=nnx.Rngs(0)))
        abstract_params = nnx.state(abstract, nnx.Param)
        specs = nnx.to_pure_dict(sharding.param_specs(abstract_params))
        shardings = sharding.named_shardings(specs, mesh)
        targets = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                               nnx.to_pure_dict(abstract_params), shardings)
        sharded = hf_import.load_params(folder, param_map, targets, "llm")
    unplaced = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                            nnx.to_pure_dict(abstract_params))
    plain = hf_import.load_params(folder, param_map, unplaced, "llm")
    for got, want, target in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain),
                                 jax.tree.leaves(shardings)):
        assert got.sharding == target
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    q = sharded["layers"]["attn"]["query"]["kernel"]  # stacked: (layers, embed, heads, hd)
    assert q.sharding.spec == jax.P(None, "fsdp", "tensor", None)  # really split
    np.testing.assert_array_equal(np.asarray(q)[0], tensors[pre + "self_attn.q_proj.weight"].T
                                  .reshape(d, 4, hd))
    np.testing.assert_array_equal(np.asarray(sharded["lm_head"]["kernel"]),
                                  tensors["lm_head.weight"].T)


def test_config_mismatch_names_the_key(tmp_path):
    cfg = dict(model_type="llama", vocab_size=16, hidden_size=8, intermediate_size=16,
               num_hidden_layers=1, num_attention_heads=2, rms_norm_eps=1e-5)
    ours = ml_collections.ConfigDict(config_lib.base_config().model.llm.to_dict())
    ours.update({k: v for k, v in hf_configs.llm_config_from_hf(cfg).items()
                 if k != "rope_scaling"})
    hf_import.check_config(hf_configs.llm_config_from_hf(cfg), ours, "model.llm", "x")
    ours.mlp_dim = 32
    with pytest.raises(ValueError, match=r"config.model.llm.mlp_dim \(32\).*x/config.json \(16\)"):
        hf_import.check_config(hf_configs.llm_config_from_hf(cfg), ours, "model.llm", "x")
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        hf_configs.llm_config_from_hf(dict(cfg, model_type="gpt2"))


# ----------------------------------------------------------------------------
# Parity with transformers (PyTorch, CPU, float32).
# ----------------------------------------------------------------------------


def _torch():
    # torch and transformers are test requirements: missing, these tests fail (never skip).
    import torch  # noqa: PLC0415
    import transformers  # noqa: F401, PLC0415

    torch.manual_seed(0)
    return torch


def _load_module(module, folder, param_map):
    params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    loaded = hf_import.load_params(folder, param_map, params, type(module).__name__)
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, loaded)
    nnx.update(module, state)
    return module


def _jitted(module, method):
    """``module.method(*args)`` as one compiled program (eager JAX compiles op by op)."""
    graphdef, state = nnx.split(module)
    fn = jax.jit(lambda state, *args: method(nnx.merge(graphdef, state), *args))
    return lambda *args: fn(state, *args)


def _save(model, path, sharded):
    model.save_pretrained(str(path), max_shard_size="40KB" if sharded else "1GB")
    assert os.path.isfile(path / ("model.safetensors.index.json" if sharded
                                  else "model.safetensors"))
    return safetensors_io.SafetensorsFolder(str(path))


@pytest.mark.parametrize("sharded", [False, True])
def test_siglip_vision_tower_matches_transformers(tmp_path, sharded):
    torch = _torch()
    from transformers import SiglipVisionConfig, SiglipVisionModel

    hf_cfg = SiglipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                num_attention_heads=4, image_size=32, patch_size=8,
                                attn_implementation="eager")
    reference = SiglipVisionModel(hf_cfg).eval()
    folder = _save(reference, tmp_path / "siglip", sharded)

    vit = ViT(_vision_section(hf_configs.vision_config_from_hf(folder.config)), rngs=nnx.Rngs(0))
    vit = _load_module(vit, folder, param_maps.vision_param_map(folder))
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    ours = np.asarray(_jitted(vit, ViT.encode_images)(jnp.asarray(images)))
    pixels = np.asarray(normalize_pixels(jnp.asarray(images))).transpose(0, 3, 1, 2)
    with torch.no_grad():
        theirs = reference(pixel_values=torch.tensor(pixels)).last_hidden_state.numpy()
    assert ours.shape == theirs.shape == (3, 16, 48)
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)


def test_siglip2_vision_tower_matches_transformers(tmp_path):
    torch = _torch()
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    hf_cfg = Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_patches=16, patch_size=8,
                                 attn_implementation="eager")
    reference = Siglip2VisionModel(hf_cfg).eval()
    folder = _save(reference, tmp_path / "siglip2", False)
    vit = ViT(_vision_section(hf_configs.vision_config_from_hf(folder.config)), rngs=nnx.Rngs(0))
    vit = _load_module(vit, folder, param_maps.vision_param_map(folder))
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    ours = np.asarray(_jitted(vit, ViT.encode_images)(jnp.asarray(images)))
    # SigLIP2 takes patches already flattened in (p, p, c) order, the same as patchify.
    patches = np.asarray(patchify(normalize_pixels(jnp.asarray(images)), 8))
    with torch.no_grad():
        theirs = reference(pixel_values=torch.tensor(patches),
                           pixel_attention_mask=torch.ones(2, 16, dtype=torch.long),
                           spatial_shapes=torch.tensor([[4, 4], [4, 4]])).last_hidden_state
    np.testing.assert_allclose(ours, theirs.numpy(), atol=ATOL, rtol=0)


def _vision_section(keys: dict):
    """``model.vision`` with the keys a SigLIP ``config.json`` sets (as ``:vision=`` does)."""
    cfg = config_lib.base_config().model.vision
    cfg.update(keys)
    return cfg


def _llm_section(keys: dict):
    """``model.llm`` with the keys a Qwen2 / Llama ``config.json`` sets (as ``:llm=`` does)."""
    cfg = config_lib.base_config().model.llm
    keys = dict(keys)
    cfg.rope_scaling.update(keys.pop("rope_scaling"))
    cfg.update(keys)
    return cfg


def _llm_logits(folder, tokens, positions):
    cfg = _llm_section(hf_configs.llm_config_from_hf(folder.config))
    llm = _load_module(LLM(cfg, rngs=nnx.Rngs(0)), folder, param_maps.llm_param_map(folder))
    forward = _jitted(llm, lambda m, tokens, positions: m(m.embed(tokens), positions)[0])
    return np.asarray(forward(jnp.asarray(tokens), jnp.asarray(positions)))


def _hf_logits(torch, model, tokens, positions):
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(tokens),
                     position_ids=torch.from_numpy(positions)).logits.numpy()


@pytest.mark.parametrize("tied", [False, True])
def test_qwen2_logits_match_transformers(tmp_path, tied):
    torch = _torch()
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hf_cfg = Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         rms_norm_eps=1e-6, tie_word_embeddings=tied, rope_theta=1e6,
                         attn_implementation="eager")
    model = Qwen2ForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # random init leaves the q/k/v biases at zero: make them count
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    folder = _save(model, tmp_path / "qwen2", sharded=not tied)
    tokens = np.random.default_rng(0).integers(0, 96, (2, 11))
    positions = np.tile(np.arange(11), (2, 1))
    ours = _llm_logits(folder, tokens, positions)
    np.testing.assert_allclose(ours, _hf_logits(torch, model, tokens, positions),
                               atol=ATOL, rtol=0)


def test_llama3_rope_scaling_logits_match_transformers(tmp_path):
    torch = _torch()
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = dict(rope_type="llama3", rope_theta=500_000.0, factor=8.0, low_freq_factor=1.0,
                high_freq_factor=4.0, original_max_position_embeddings=32)
    kw = dict(vocab_size=80, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=1, rms_norm_eps=1e-5,
              tie_word_embeddings=False, attn_implementation="eager")
    try:  # transformers >= 5
        hf_cfg = LlamaConfig(rope_parameters=rope, **kw)
    except TypeError:
        hf_cfg = LlamaConfig(rope_theta=rope.pop("rope_theta"), rope_scaling=rope, **kw)
    model = LlamaForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # sharp attention, so that RoPE angles move the logits
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(20.0)
    folder = _save(model, tmp_path / "llama", sharded=True)
    ours_cfg = hf_configs.llm_config_from_hf(folder.config)
    assert ours_cfg["rope_scaling"]["type"] == "llama3"
    assert ours_cfg["rope_scaling"]["original_max_position"] == 32
    tokens = np.random.default_rng(1).integers(0, 80, (2, 9))
    positions = np.tile(np.arange(9), (2, 1)) + np.array([[0], [3000]])  # far past 32
    ours = _llm_logits(folder, tokens, positions)
    theirs = _hf_logits(torch, model, tokens, positions)
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)
    # The scaling matters at these positions: plain RoPE would not match.
    folder.config.pop("rope_parameters", None)
    folder.config.pop("rope_scaling", None)
    folder.config["rope_theta"] = 500_000.0
    plain = _llm_logits(folder, tokens, positions)
    assert np.abs(plain[1] - theirs[1]).max() > 100 * ATOL


def test_config_args_point_a_run_at_pretrained_folders(tmp_path, monkeypatch):
    """``vision=`` / ``llm=`` set the architecture; the run's initial state holds the weights,
    read into place: no random copy of the pretrained towers is ever materialised."""
    torch = _torch()
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from configs import short_video
    from data_pipelines import datasets as data_lib
    from frejax.training import train_state

    vision = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=48, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
        image_size=32, patch_size=8))
    llm = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    vision.save_pretrained(str(tmp_path / "siglip"))
    llm.save_pretrained(str(tmp_path / "qwen"))
    config = short_video.get_config(
        f"smoke,stage=1,vision={tmp_path / 'siglip'},llm={tmp_path / 'qwen'}")
    config_lib.validate(config)
    assert config.model.vision.width == 48 and config.model.llm.vocab_size == 96
    assert config.model.llm.qkv_bias and config.optim.freeze == "encoder,llm"
    config.mesh.shape = (1, 2, 2)
    mesh = sharding.make_mesh(config.mesh.shape, jax.devices()[:4])
    received = []
    load = hf_import.load_pretrained
    monkeypatch.setattr(hf_import, "load_pretrained",
                        lambda config, params: received.append(params) or load(config, params))
    with jax.set_mesh(mesh), sharding.axis_rules(config.sharding.rules):
        tok = data_lib.make_tokenizer(config)
        setup = train_state.make_setup(config, mesh, tok)
        params = train_state.init_state(config, setup, tok)["params"]
    towers = jax.tree.leaves({k: received[0][k] for k in ("encoder", "llm")})
    assert towers and all(type(x) is jax.ShapeDtypeStruct for x in towers)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(received[0]["projector"]))
    with torch.no_grad():
        conv = vision.embeddings.patch_embedding.weight.numpy()
        embedding = llm.model.embed_tokens.weight.numpy()
    np.testing.assert_array_equal(
        np.asarray(params["encoder"]["patch_embed"]["kernel"]),
        conv.transpose(2, 3, 1, 0).reshape(-1, 48))
    np.testing.assert_array_equal(np.asarray(params["llm"]["embedding"]), embedding)
    assert params["llm"]["embedding"].sharding.spec == jax.P("tensor", "fsdp")
