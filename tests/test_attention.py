"""Every attention backend equals the XLA reference: GQA, padding, causal, caches, gradients."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from frejax.nn import attention
from frejax import config_lib
from frejax.nn.attention import AttentionMask
from frejax.models.llm import LLM
from frejax.models.vit import ViT

BACKENDS = ("dot_product", "blockwise", "splash")
TOL = dict(rtol=2e-5, atol=2e-5)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks smaller than the test sequences, so the blockwise path really loops."""
    monkeypatch.setattr(attention, "BLOCK_Q", 64)
    monkeypatch.setattr(attention, "BLOCK_KV", 48)
    monkeypatch.setattr(attention, "SPLASH_BLOCK", 128)


def _qkv(b=2, l=200, heads=4, kv_heads=2, d=16, s=None, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    s = s or l
    q = jax.random.normal(ks[0], (b, l, heads, d))
    k = jax.random.normal(ks[1], (b, s, kv_heads, d))
    v = jax.random.normal(ks[2], (b, s, kv_heads, d))
    valid = (jax.random.uniform(ks[3], (b, s)) > 0.3).at[:, 0].set(True)
    return q, k, v, valid


def _masked_sum(out, rows):
    """Loss over the rows that are not padding (a padded query's output is never read)."""
    return jnp.sum(out * rows[:, :, None, None] * jnp.arange(1, out.shape[-1] + 1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
def test_backend_equals_the_reference_with_gqa_and_padding(backend, causal):
    q, k, v, valid = _qkv()
    mask = AttentionMask(key_valid=valid, causal=causal)

    def run(impl):
        out = attention.attention(q, k, v, mask, implementation=impl)
        grads = jax.grad(lambda q, k, v: _masked_sum(
            attention.attention(q, k, v, mask, implementation=impl), valid),
            argnums=(0, 1, 2))(q, k, v)
        return out, grads

    (want, want_grads), (got, got_grads) = run("xla"), run(backend)
    rows = np.asarray(valid)[:, :, None, None]
    np.testing.assert_allclose(np.where(rows, got, 0), np.where(rows, want, 0), **TOL)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, **TOL)


@pytest.mark.parametrize("backend", ("dot_product", "blockwise"))
def test_backend_equals_the_reference_with_a_dense_mask_and_cache_places(backend):
    """Queries written at per-example cache slots: what decoding with a KV cache asks."""
    q, k, v, valid = _qkv(l=5, s=150)
    slots = jnp.array([[60, 61, 62, 63, 64], [140, 141, 142, 143, 144]])
    dense = jax.random.uniform(jax.random.key(9), (2, 5, 150)) > 0.1
    mask = AttentionMask(key_valid=valid, causal=True, q_places=slots,
                         kv_places=jnp.arange(150)[None], dense=dense)
    want = attention.attention(q, k, v, mask, implementation="xla")
    np.testing.assert_allclose(attention.attention(q, k, v, mask, implementation=backend),
                               want, **TOL)


def test_splash_refuses_what_it_cannot_express_and_auto_falls_back():
    q, k, v, valid = _qkv(l=4, s=32)
    mask = AttentionMask(key_valid=valid, causal=True, q_places=jnp.arange(4)[None] + 28,
                         kv_places=jnp.arange(32)[None])
    with pytest.raises(ValueError, match="splash attention needs self-attention"):
        attention.attention(q, k, v, mask, implementation="splash")
    assert attention.resolve("auto", 4, 32, structured=False) == "xla"  # on CPU
    assert attention.resolve("auto", 8192, 8192, structured=True) == "blockwise"
    with pytest.raises(ValueError, match="must be one of"):
        attention.resolve("flash", 4, 4, structured=True)


def _llm_cfg(implementation, **kw):
    cfg = config_lib.base_config().model.llm
    cfg.update(vocab_size=40, width=32, depth=2, heads=4, kv_heads=2, mlp_dim=64,
               attention=implementation, **kw)
    return cfg


@pytest.mark.parametrize("backend", BACKENDS)
def test_llm_prefill_and_cached_decoding_match_the_reference(backend):
    """Full-sequence logits with padding, then greedy decoding through the cache (which
    splash cannot express: it falls back there only under ``auto``, so it runs prefill)."""
    tokens = jax.random.randint(jax.random.key(1), (2, 140), 0, 40)
    valid = jnp.ones((2, 140), bool).at[1, 100:].set(False).at[0, 30:40].set(False)
    positions = jnp.maximum(jnp.cumsum(valid, 1) - 1, 0)
    outs = {}
    for impl in ("xla", backend):
        llm = LLM(_llm_cfg(impl), rngs=nnx.Rngs(0))
        logits, _ = nnx.jit(lambda m: m(m.embed(tokens), positions, valid))(llm)
        outs[impl] = np.where(np.asarray(valid)[..., None], logits, 0)
    np.testing.assert_allclose(outs[backend], outs["xla"], **TOL)
    if backend == "splash":
        return
    decoded = {}
    for impl in ("xla", backend):
        llm = LLM(_llm_cfg(impl), rngs=nnx.Rngs(0))

        @nnx.jit
        def prefill_and_step(m):
            cache = m.init_cache(2, 150)
            _, cache = m(m.embed(tokens[:, :100]), positions[:, :100], valid[:, :100],
                         cache, jnp.zeros((2,), jnp.int32))
            logits, _ = m(m.embed(tokens[:, 100:101]), positions[:, 100:101],
                          jnp.ones((2, 1), bool), cache, jnp.full((2,), 100, jnp.int32))
            return logits
        decoded[impl] = prefill_and_step(llm)
    np.testing.assert_allclose(decoded[backend], decoded["xla"], **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vit_blocks_match_the_reference(backend):
    frames = jax.random.randint(jax.random.key(0), (1, 2, 64, 64, 3), 0, 255).astype(jnp.uint8)
    outs = {}
    for impl in ("xla", backend):
        cfg = ml_collections.ConfigDict(config_lib.base_config().model.vision.to_dict())
        cfg.update(image_size=64, patch_size=4, width=32, depth=2, heads=2, mlp_dim=64,
                   attention=impl)  # 256 tokens per frame
        outs[impl] = nnx.jit(lambda m: m(frames))(ViT(cfg, rngs=nnx.Rngs(0)))
    np.testing.assert_allclose(outs[backend], outs["xla"], rtol=1e-4, atol=1e-4)


def test_blockwise_memory_does_not_grow_with_the_square_of_the_length():
    """The compiled reference holds (L, S) scores; the blockwise path only blocks of them."""
    def temp_bytes(impl, length):
        q = jax.ShapeDtypeStruct((1, length, 2, 32), jnp.float32)
        kv = jax.ShapeDtypeStruct((1, length, 1, 32), jnp.float32)
        f = jax.jit(jax.grad(lambda q, k, v: attention.attention(
            q, k, v, AttentionMask(causal=True), implementation=impl).sum()))
        return f.lower(q, kv, kv).compile().memory_analysis().temp_size_in_bytes

    ref = temp_bytes("xla", 2048)
    blockwise = temp_bytes("blockwise", 2048)
    assert ref >= 2 * 2048 * 2048 * 4  # two heads' float32 score matrices
    assert blockwise < ref / 8, (blockwise, ref)
