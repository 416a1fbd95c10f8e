"""LoRA adapters, per-module freezing and learning-rate multipliers, the stage recipes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import short_video
from frejax import config_lib
from data_pipelines import datasets as data_lib
from frejax import sharding
from frejax.training import train
from frejax.training import train_state
from frejax.models import lora
from frejax.nn.layers import Dense
from frejax.models.llm import LLM


def test_lora_dense_starts_as_the_base_and_adds_a_low_rank_update():
    base = Dense(6, (2, 3), ("embed", "heads", "head_dim"), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 5, 6))
    before = base(x)
    adapted = lora.LoRADense(base, rank=2, alpha=4.0, rngs=nnx.Rngs(2))
    np.testing.assert_array_equal(adapted(x), before)  # B = 0 at init
    adapted.lora_b[...] = jax.random.normal(jax.random.key(3), (2, 2, 3))
    a, b = adapted.lora_a[...], adapted.lora_b[...]
    want = before + 2.0 * jnp.einsum("ble,er,rhd->blhd", x, a, b)
    np.testing.assert_allclose(adapted(x), want, atol=1e-5)
    assert adapted.kernel is base.kernel  # same param at the same path: imports line up
    assert adapted.lora_a.get_metadata()["out_sharding"] == ("embed", None)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_apply_lora_adapts_attention_and_mlp_and_keeps_the_output(scan_layers):
    cfg = config_lib.base_config().model.llm
    cfg.update(vocab_size=20, width=16, depth=2, heads=4, kv_heads=2, mlp_dim=32, qkv_bias=True,
               tie_embeddings=False, scan_layers=scan_layers)
    llm = LLM(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.arange(12).reshape(2, 6) % 20
    positions = jnp.tile(jnp.arange(6), (2, 1))
    forward = nnx.jit(lambda m: m(m.embed(tokens), positions)[0])
    before = forward(llm)
    lora.apply_lora(llm, rank=4, alpha=8.0, rngs=nnx.Rngs(1))
    after = forward(llm)
    np.testing.assert_array_equal(after, before)
    flat = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(llm, nnx.Param))}
    for target in ("attn/query", "attn/key", "attn/value", "attn/out", "mlp/gate", "mlp/up",
                   "mlp/down"):
        if scan_layers:  # one stacked adapter per param, a leading axis of 2 layers
            assert flat[f"layers/{target}/lora_a"].shape[0] == 2
            assert f"layers/{target}/kernel" in flat
        else:
            assert f"layers/1/{target}/lora_a" in flat and f"layers/1/{target}/kernel" in flat


def test_lora_on_stacked_layers_draws_the_unrolled_adapters():
    cfg = config_lib.base_config().model.llm
    cfg.update(vocab_size=20, width=16, depth=3, heads=4, kv_heads=2, mlp_dim=32)
    llms = {}
    for scan in (True, False):
        cfg.scan_layers = scan
        llms[scan] = lora.apply_lora(LLM(cfg, rngs=nnx.Rngs(0)), rank=2, alpha=4.0,
                                     rngs=nnx.Rngs(1))
    stacked = nnx.to_pure_dict(nnx.state(llms[True], nnx.Param))["layers"]
    unrolled = nnx.to_pure_dict(nnx.state(llms[False], nnx.Param))["layers"]
    for i in range(3):
        jax.tree.map(lambda s, u, i=i: np.testing.assert_array_equal(s[i], u),
                     stacked, unrolled[i])


def _params():
    k = jax.random.split(jax.random.key(0), 4)
    return {"encoder": {"w": jax.random.normal(k[0], (3, 4))},
            "projector": {"w": jax.random.normal(k[1], (4, 4)), "b": jnp.ones(4)},
            "llm": {"w": jax.random.normal(k[2], (4, 2)),
                    "lora_a": jax.random.normal(k[3], (4, 1))}}


def _first_update(config, params, grads):
    tx = train_state.create_optimizer(config)
    return jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(grads, params)


def test_default_optimizer_is_unchanged_by_the_group_options():
    config = short_video.get_config("smoke")
    config.train.num_steps, config.optim.warmup_steps = 10, 0
    params = _params()
    grads = jax.tree.map(lambda p: jnp.cos(p) * 3.0, params)
    o = config.optim
    schedule = train_state.learning_rate_schedule(config)
    plain = optax.chain(
        optax.clip_by_global_norm(o.clip_norm),
        optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                    mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)))
    want = jax.jit(lambda g, p: plain.update(g, plain.init(p), p)[0])(grads, params)
    got = _first_update(config, params, grads)
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_frozen_groups_get_no_update_no_state_and_no_share_of_the_clip():
    config = short_video.get_config("smoke")
    config.train.num_steps, config.optim.warmup_steps = 10, 0
    config.optim.clip_norm = 1.0
    params = _params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
    grads["encoder"]["w"] = jnp.full((3, 4), 1e6)  # would dominate the clipping norm
    config.optim.freeze = "encoder,llm"
    config_lib.validate(config)
    updates = _first_update(config, params, grads)
    assert not np.any(updates["encoder"]["w"]) and not np.any(updates["llm"]["w"])
    assert np.any(updates["llm"]["lora_a"])  # adapters are their own group: they still train
    assert np.all(np.abs(updates["projector"]["w"]) > 1e-5)  # not clipped away by the encoder
    tx = train_state.create_optimizer(config)
    state_leaves = sum(x.size for x in jax.tree.leaves(tx.init(params)))
    trained = sum(x.size for x in jax.tree.leaves(params["projector"])) + params["llm"]["lora_a"].size
    assert state_leaves <= 2 * trained + 8  # Adam moments only for what trains (+ counters)


def test_lr_multiplier_scales_that_group_only():
    config = short_video.get_config("smoke")
    config.train.num_steps, config.optim.warmup_steps = 10, 0
    params = _params()
    grads = jax.tree.map(lambda p: jnp.sin(p) + 0.5, params)
    base = _first_update(config, params, grads)
    config.optim.lr_multipliers.projector = 0.25
    scaled = _first_update(config, params, grads)
    np.testing.assert_allclose(scaled["projector"]["w"], 0.25 * base["projector"]["w"], rtol=1e-5)
    np.testing.assert_allclose(scaled["encoder"]["w"], base["encoder"]["w"], rtol=1e-6)


def test_stage_variants_validate_and_say_what_trains():
    c1 = short_video.get_config("stage=1")
    assert c1.optim.freeze == "encoder,llm" and c1.model.llm.lora.rank == 0
    c2 = short_video.get_config("stage=2")
    assert c2.optim.freeze == "encoder" and c2.optim.lr_multipliers.llm == 0.1
    c3 = short_video.get_config("stage=2,lora=8")
    assert c3.optim.freeze == "encoder,llm" and c3.model.llm.lora.rank == 8
    for c in (c1, c2, c3):
        config_lib.validate(c)
    with pytest.raises(ValueError, match="lora needs stage=2"):
        short_video.get_config("stage=1,lora=8")
    bad = short_video.get_config("")
    bad.optim.freeze = "encoder,vision"
    with pytest.raises(ValueError, match=r"config.optim.freeze: unknown groups \['vision'\]"):
        config_lib.validate(bad)


def test_stage2_lora_train_step_updates_only_adapters_and_projector():
    # uniform_frames: a compressor without params, quicker to compile than Fre-Res.
    config = short_video.get_config("smoke,stage=2,lora=4,compressor=uniform_frames")
    config.mesh.shape = (1, 1, 1)
    config.optim.warmup_steps = 0
    config_lib.validate(config)
    mesh = sharding.make_mesh(config.mesh.shape, jax.devices()[:1])
    with jax.set_mesh(mesh), sharding.axis_rules(config.sharding.rules):
        tok = data_lib.make_tokenizer(config)
        setup = train_state.make_setup(config, mesh, tok)
        state = train_state.init_state(config, setup, tok)
        before = jax.device_get(state["params"])
        batch_sharding = sharding.batch_sharding(mesh)
        batch = data_lib.next_global_batch(
            data_lib.make_train_iterator(config, tok, mesh), batch_sharding)
        step = train.make_train_step(setup, config, batch_sharding)
        state, metrics = step(state, batch)
        after = jax.device_get(state["params"])
    assert np.isfinite(float(metrics["loss"]))
    flat_before = dict(nnx.traversals.flatten_mapping(before))
    flat_after = dict(nnx.traversals.flatten_mapping(after))
    changed = {p for p in flat_before if not np.array_equal(flat_before[p], flat_after[p])}
    groups = {train_state.training_group(p) for p in changed}
    assert groups == {"lora", "projector"}, groups
    assert ("llm", "layers", "attn", "query", "kernel") not in changed
