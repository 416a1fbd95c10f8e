"""Tests for the ViT, LLM (RoPE, GQA, KV cache), projector and the video MLLM."""

import functools

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from frejax import compression, config_lib, sharding
from frejax.compression import CompressedTokens, Compressor
from frejax.models import LLM, Projector, VideoMLLM, ViT, apply_rope
from frejax.nn.attention import AttentionMask, attention

VOCAB = 64
VIDEO_ID = 3
TOL = dict(atol=1e-4, rtol=1e-4)
# CPU compile time dominates these tiny programs; skip XLA's expensive backend passes.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_llvm_disable_expensive_passes": True})


# --- test-local compressors (the shared registry is filled elsewhere) ---------------------


class _TestIdentity(Compressor):
    """All T*N tokens; frames masked out by ``frame_mask`` are invalid."""

    name = "test_identity"

    @property
    def num_valid_tokens(self):
        return self.geometry.full_tokens

    def compress(self, latents, frame_mask):
        b, t, n, d = latents.shape
        mask = jnp.repeat(frame_mask, n, axis=1)
        return CompressedTokens(latents.reshape(b, t * n, d), mask)


class _TestHalfPad(Compressor):
    """Uses half the budget and pads the rest: exercises masked visual places."""

    name = "test_half_pad"

    @property
    def num_valid_tokens(self):
        return max(1, self.budget // 2)

    def compress(self, latents, frame_mask):
        b, t, n, d = latents.shape
        k = self.num_valid_tokens
        tokens = latents.reshape(b, t * n, d)[:, :k]
        return CompressedTokens(tokens, jnp.ones((b, k), bool))


@pytest.fixture(autouse=True, scope="module")
def _test_compressors():
    """Registers the test-only compressors for this module's tests only."""
    for cls in (_TestIdentity, _TestHalfPad):
        compression.register(cls)
    yield
    for cls in (_TestIdentity, _TestHalfPad):
        compression.unregister(cls.name)


# --- tiny configs ---------------------------------------------------------------------------


def vision_cfg(**kw):
    cfg = config_lib.base_config().model.vision
    cfg.update(dict(image_size=8, patch_size=4, width=32, depth=1, heads=2, mlp_dim=64), **kw)
    return cfg


def llm_cfg(**kw):
    cfg = config_lib.base_config().model.llm
    cfg.update(dict(vocab_size=VOCAB, width=32, depth=2, heads=4, kv_heads=2, head_dim=0,
                    mlp_dim=64, qkv_bias=True, tie_embeddings=False), **kw)
    return cfg


def model_cfg(**llm_kw):
    cfg = config_lib.base_config().model
    cfg.vision, cfg.llm = vision_cfg(), llm_cfg(**llm_kw)
    return cfg


def compressor_cfg(name="test_identity", budget=0):
    cfg = config_lib.compressor_config(name, ratio=0.0)
    cfg.budget = budget
    return cfg


def make_mllm(name="test_identity", num_frames=2, dtype=jnp.float32, **llm_kw):
    return VideoMLLM(model_cfg(**llm_kw), compressor_cfg(name), num_frames=num_frames,
                     vocab_size=VOCAB, video_token_id=VIDEO_ID, rngs=nnx.Rngs(0), dtype=dtype)


@functools.lru_cache(maxsize=None)
def mllm(name="test_half_pad", dtype=jnp.float32, **llm_kw):
    """A shared tiny model (one LLM layer); "test_half_pad" leaves masked visual places."""
    llm_kw.setdefault("depth", 1)
    return fast_init(lambda: make_mllm(name, dtype=dtype, **llm_kw))


def make_batch(rows, length, num_frames=2, image_size=8, seed=0):
    """rows: list of (prompt tokens incl. placeholder, answer tokens)."""
    rng = np.random.default_rng(seed)
    b = len(rows)
    tokens = np.zeros((b, length), np.int32)
    text_mask = np.zeros((b, length), bool)
    prompt_len = np.zeros((b,), np.int32)
    for r, (prompt, answer) in enumerate(rows):
        seq = list(prompt) + list(answer)
        tokens[r, :len(seq)] = seq
        text_mask[r, :len(seq)] = True
        prompt_len[r] = len(prompt)
    frames = rng.integers(0, 256, (b, num_frames, image_size, image_size, 3), dtype=np.uint8)
    return dict(frames=jnp.asarray(frames), frame_mask=jnp.ones((b, num_frames), bool),
                tokens=jnp.asarray(tokens), text_mask=jnp.asarray(text_mask),
                prompt_len=jnp.asarray(prompt_len))


def fast_init(make, seed=0):
    """Builds ``make()`` abstractly and fills its parameters from numpy.

    ``nnx.eval_shape`` keeps the structure and the sharding metadata; numpy
    values avoid compiling dozens of tiny PRNG programs, which dominate test time
    on CPU. Real initialisers are exercised in ``test_projector_and_real_init``.
    """
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    rng = np.random.default_rng(seed)

    def fill(path, a):
        if len(a.shape) >= 2:
            x = rng.normal(0.0, a.shape[0] ** -0.5, a.shape)
        else:
            x = rng.normal(0.0, 0.1, a.shape) + ("scale" in jax.tree_util.keystr(path))
        return jnp.asarray(x, a.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, abstract))


@functools.lru_cache(maxsize=None)
def _jitted(graphdef, method):
    return jit(lambda state, *args: getattr(nnx.merge(graphdef, state), method)(*args))


def jit_method(module, method):
    """``jax.jit`` over the module state (split -> jit -> merge), as the trainer does."""
    graphdef, state = nnx.split(module)
    return lambda *args: _jitted(graphdef, method)(state, *args)


# --- ViT ------------------------------------------------------------------------------------


def test_vit_shapes_and_chunked_encoding_matches():
    frames = jnp.asarray(np.random.default_rng(1).integers(0, 256, (2, 5, 8, 8, 3), np.uint8))
    full = fast_init(lambda: ViT(vision_cfg(), rngs=nnx.Rngs(0)))
    chunked = fast_init(lambda: ViT(vision_cfg(encode_chunk=2, remat="full"), rngs=nnx.Rngs(0)))
    nnx.update(chunked, nnx.state(full))  # same weights, chunked over frames (5 -> 2 + 2 + 1)
    assert full.grid == (2, 2)
    out = jit_method(full, "__call__")(frames)
    assert out.shape == (2, 5, 4, 32)
    np.testing.assert_allclose(jit_method(chunked, "__call__")(frames), out, **TOL)
    # Each chunk rematerialised (the map keeps its frames only): the same gradients.
    def grads(model):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        loss = lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(frames) ** 2)  # noqa: E731
        return jax.jit(jax.grad(loss))(params)

    for g, w in zip(jax.tree.leaves(grads(chunked)), jax.tree.leaves(grads(full)), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-3)


# --- LLM pieces -----------------------------------------------------------------------------


def test_rope_scores_depend_only_on_position_difference():
    q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, 16))

    @jit
    def scores(m, n):  # (pairs,), (pairs,) -> (pairs,)
        qm = apply_rope(jnp.broadcast_to(q, (m.size, 1, 1, 16)), m[:, None], 10000.0)
        kn = apply_rope(jnp.broadcast_to(k, (n.size, 1, 1, 16)), n[:, None], 10000.0)
        return jnp.sum(qm * kn, axis=(1, 2, 3))

    m, n = jnp.array([3, 10, 0, 3]), jnp.array([1, 4, 7, 2])
    base, shifted = scores(m, n), scores(m + 13, n + 13)
    np.testing.assert_allclose(base, shifted, **TOL)
    assert abs(float(base[0] - base[3])) > 1e-3  # but they do depend on the difference


def _reference_attention(q, k, v, mask):
    """Plain-jnp multi-head attention, one key/value head per query head."""
    s = jnp.einsum("blhd,bshd->bhls", q, k) / np.sqrt(q.shape[-1])
    s = jnp.where(mask[:, None], s, -1e30)
    return jnp.einsum("bhls,bshd->blhd", jax.nn.softmax(s, -1), v)


def test_gqa_equals_mha_reference():
    b, l, h, d = 2, 6, 4, 8
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(b, l, h, d)), jnp.float32) for _ in range(3))
    x = jnp.asarray(rng.normal(size=(b, l, 32)), jnp.float32)
    causal = np.tril(np.ones((l, l), bool))[None]
    mask = jnp.asarray(causal & np.array([[1] * l, [1] * 4 + [0] * 2], bool)[:, None])
    pos = jnp.broadcast_to(jnp.arange(l), (b, l))
    attn = fast_init(lambda: LLM(llm_cfg(kv_heads=4, depth=1, scan_layers=False),
                                 rngs=nnx.Rngs(0))).layers[0].attn
    graphdef, state = nnx.split(attn)

    @jit
    def run(state):
        attn = nnx.merge(graphdef, state)
        k2, v2 = k[:, :, :2], v[:, :, :2]
        got_module, _ = attn(x, pos, AttentionMask(dense=mask))
        proj = lambda m: jnp.einsum("ble,ehd->blhd", x, m.kernel[...]) + m.bias[...]
        ref = _reference_attention(apply_rope(proj(attn.query), pos, 1e4),
                                   apply_rope(proj(attn.key), pos, 1e4), proj(attn.value), mask)
        return dict(
            mha=(attention(q, k, v, AttentionMask(dense=mask), implementation="xla"),
                 _reference_attention(q, k, v, mask)),
            # 2 kv heads shared by pairs of query heads == MHA on repeated k/v.
            gqa=(attention(q, k2, v2, AttentionMask(dense=mask), implementation="xla"),
                 _reference_attention(q, jnp.repeat(k2, 2, 2), jnp.repeat(v2, 2, 2), mask)),
            # The LLM attention module with kv_heads == heads == MHA from its own weights.
            module=(got_module, jnp.einsum("blhd,hde->ble", ref, attn.out.kernel[...])))

    for name, (got, want) in run(state).items():
        np.testing.assert_allclose(got, want, err_msg=name, **TOL)


def test_llm_is_causal():
    llm = fast_init(lambda: LLM(llm_cfg(), rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(llm)
    tokens = jnp.asarray(np.random.default_rng(0).integers(4, VOCAB, (2, 8)), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(8), (2, 8))

    @jit
    def run(state):
        llm = nnx.merge(graphdef, state)
        fwd = lambda t: llm(llm.embed(t), pos, jnp.ones((2, 8), bool))[0]
        return fwd(tokens), fwd(tokens.at[:, 5].set(1))

    a, b = run(state)
    assert a.shape == (2, 8, VOCAB)
    np.testing.assert_allclose(a[:, :5], b[:, :5], **TOL)
    assert not np.allclose(a[:, 5:], b[:, 5:], atol=1e-4)


def test_kv_cache_decode_matches_full_forward():
    llm = fast_init(lambda: LLM(llm_cfg(tie_embeddings=True), rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(llm)
    prompt_lens = np.array([3, 5])  # per-example prompt lengths, prompts padded to 5
    total = 9  # prompt + continuation, per example
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, total, 32)), jnp.float32)

    @jit
    def run(state):
        model = nnx.merge(graphdef, state)
        full_pos = jnp.broadcast_to(jnp.arange(total), (2, total))
        full = model(x, full_pos, jnp.ones((2, total), bool))[0]
        cache = model.init_cache(2, 12)
        plen = jnp.asarray(prompt_lens)
        prompt_valid = jnp.arange(5)[None] < plen[:, None]
        prompt_pos = jnp.broadcast_to(jnp.arange(5), (2, 5))
        prefill, cache = model(x[:, :5], prompt_pos, prompt_valid, cache, jnp.zeros(2, jnp.int32))
        steps = []
        for k in range(total - 5):
            idx = plen + k  # each example writes and attends at its own position
            token = x[jnp.arange(2), idx][:, None]
            logits, cache = model(token, idx[:, None], jnp.ones((2, 1), bool), cache, idx)
            steps.append(logits[:, 0])
        return full, prefill, jnp.stack(steps, 1)

    full, prefill, steps = run(state)
    for r, p in enumerate(prompt_lens):
        np.testing.assert_allclose(prefill[r, :p], full[r, :p], **TOL)
        np.testing.assert_allclose(steps[r], full[r, p:p + total - 5], **TOL)


def test_projector_and_real_init():
    proj = Projector(32, 48, rngs=nnx.Rngs(0))  # real initialisers, eagerly
    assert proj.fc1.kernel[...].shape == (32, 48) and proj.fc2.kernel[...].shape == (48, 48)
    assert float(jnp.std(proj.fc1.kernel[...])) > 0
    assert jit_method(proj, "__call__")(jnp.ones((2, 5, 32))).shape == (2, 5, 48)


# --- VideoMLLM ------------------------------------------------------------------------------


def test_video_mllm_shapes_and_token_counts():
    model = mllm("test_identity", dtype=jnp.bfloat16)
    assert (model.num_visual_tokens, model.full_visual_tokens, model.visual_tokens_used) == (8, 8, 8)
    padded = mllm()
    assert (padded.num_visual_tokens, padded.visual_tokens_used) == (8, 4)
    batch = make_batch([([5, VIDEO_ID, 6], [7, 8]), ([VIDEO_ID, 9], [10])], length=8)
    visual = jit_method(model, "encode_video")(batch)
    assert visual.tokens.shape == (2, 8, 32) and visual.mask.shape == (2, 8)
    logits = jit_method(model, "__call__")(batch, visual)  # bf16 compute, cached visual tokens
    assert logits.shape == (2, 8, VOCAB) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()


def test_video_mllm_splice_matches_manual_sequence_and_ignores_padding():
    """Text-aligned logits equal an LLM run on [text before, valid visual, text after]."""
    model = mllm()
    rows = [([5, 6, VIDEO_ID, 7], [8, 9]), ([VIDEO_ID, 11], [12])]
    batch = make_batch(rows, length=8)
    logits = jit_method(model, "__call__")(batch)
    # Whatever sits in the padding after the answer changes nothing.
    junk = jnp.where(batch["text_mask"], batch["tokens"], 17)
    junk_logits = jit_method(model, "__call__")({**batch, "tokens": junk})
    real = np.asarray(batch["text_mask"])
    np.testing.assert_allclose(np.asarray(junk_logits)[real], np.asarray(logits)[real], **TOL)

    k = model.visual_tokens_used
    graphdef, state = nnx.split(model)

    @jit
    def manual(state):
        model = nnx.merge(graphdef, state)
        vis = model.projector(model.encode_video(batch).tokens)[:, :k]  # valid places only
        out = []
        for r, (prompt, answer) in enumerate(rows):
            text = list(prompt) + list(answer)
            p = text.index(VIDEO_ID)
            emb = model.llm.embed(jnp.asarray([text]))
            seq = jnp.concatenate([emb[:, :p], vis[r:r + 1], emb[:, p + 1:]], axis=1)
            n = seq.shape[1]
            ref = model.llm(seq, jnp.arange(n)[None], jnp.ones((1, n), bool))[0][0]
            out.append(jnp.concatenate([ref[:p], ref[p + k - 1:]]))  # placeholder -> last visual
        return out

    for r, expected in enumerate(manual(state)):
        np.testing.assert_allclose(logits[r, :expected.shape[0]], expected, **TOL)


def test_generate_matches_stepwise_argmax_of_full_forward():
    model = mllm()
    n_new = 4
    # Prompts of different lengths after the video; one prefix before it (the template's).
    batch = make_batch([([5, VIDEO_ID, 7, 8], []), ([6, VIDEO_ID, 9], [])], length=8)
    forward = jit_method(model, "__call__")
    tokens = np.asarray(batch["tokens"]).copy()
    text_mask = np.asarray(batch["text_mask"]).copy()
    plen = np.asarray(batch["prompt_len"])
    expected = np.zeros((2, n_new), np.int32)
    for k in range(n_new):
        logits = np.asarray(forward({**batch, "tokens": jnp.asarray(tokens),
                                     "text_mask": jnp.asarray(text_mask)}))
        for r in range(2):
            expected[r, k] = tokens[r, plen[r] + k] = np.argmax(logits[r, plen[r] + k - 1])
            text_mask[r, plen[r] + k] = True

    graphdef, state = nnx.split(model)
    eos = int(expected[0, 1])

    @jit
    def generate(state, batch):
        model = nnx.merge(graphdef, state)
        return (model.generate(batch, n_new, prefix_len=1),
                model.generate(batch, n_new, prefix_len=1, eos_id=eos))

    got, with_eos = map(np.asarray, generate(state, batch))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)
    # After EOS every token is EOS.
    np.testing.assert_array_equal(with_eos[0, :2], expected[0, :2])
    assert (with_eos[0, 2:] == eos).all()


def test_train_step_gives_finite_grads():
    model = mllm(remat="full")  # rematerialised LLM layers
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = make_batch([([5, VIDEO_ID, 6], [7, 8]), ([VIDEO_ID, 9], [10])], length=8)

    @jit
    def grad_step(params, batch):
        def loss_fn(params):
            logits = nnx.merge(graphdef, params, rest)(batch)
            targets = batch["tokens"][:, 1:]
            answer = ((jnp.arange(7)[None] >= batch["prompt_len"][:, None] - 1)
                      & batch["text_mask"][:, 1:])
            logp = jax.nn.log_softmax(logits[:, :-1])
            nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
            return jnp.sum(nll * answer) / jnp.sum(answer)
        return jax.value_and_grad(loss_fn)(params)

    loss, grads = grad_step(params, batch)
    leaves = jax.tree.leaves(grads)
    assert np.isfinite(float(loss))
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert float(jnp.abs(grads["encoder"]["patch_embed"]["kernel"][...]).sum()) > 0
    assert float(jnp.abs(grads["llm"]["lm_head"]["kernel"][...]).sum()) > 0


RULES = (("batch", "data"), ("frames", None), ("tokens", None), ("length", None),
         ("embed", "fsdp"), ("activation_embed", "tensor"), ("mlp", "tensor"),
         ("heads", "tensor"), ("kv_heads", "tensor"), ("head_dim", None), ("vocab", "tensor"),
         ("patch", None), ("coeffs", None), ("layers", None))


def test_params_have_logical_names_and_shard_on_a_mesh():
    model = mllm()
    params = nnx.state(model, nnx.Param)
    variables = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert variables
    for var in variables:
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == var[...].ndim, var
        assert set(names) <= set(sharding.LOGICAL_AXES)
    specs = sharding.param_specs(params, RULES)
    P = jax.sharding.PartitionSpec
    assert specs["llm"]["embedding"].get_value() == P("tensor", "fsdp")

    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices")
    mesh = sharding.make_mesh((2, 2, 2))
    batch = make_batch([([5, VIDEO_ID, 6], [7]), ([VIDEO_ID, 9], [10])], length=8)
    graphdef, state = nnx.split(model)
    with jax.set_mesh(mesh), sharding.axis_rules(RULES):
        # Built on the mesh, parameters are sharded from birth.
        abstract = nnx.state(nnx.eval_shape(lambda: make_mllm(depth=1)))
        gate = abstract["llm"]["layers"]["mlp"]["gate"]["kernel"].get_value()  # stacked
        assert gate.sharding.spec == P(None, "fsdp", "tensor")
        shardings = sharding.named_shardings(sharding.param_specs(state), mesh)
        sharded = jax.device_put(state, shardings)
        logits = _jitted(graphdef, "__call__")(sharded, batch)
        # The residual stream a layer hands on (what remat keeps per layer) is split over
        # tensor on its width as well as over the batch axes.
        from frejax.models.llm import DecoderLayer  # noqa: PLC0415

        layer = DecoderLayer(16, 4, 2, 4, 32, qkv_bias=False, rope_theta=1e4, norm_eps=1e-6,
                             dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
        layer_def, layer_state = nnx.split(layer)
        x = jnp.ones((4, 8, 16))
        out, _ = jax.jit(lambda st, x: nnx.merge(layer_def, st)(
            x, jnp.broadcast_to(jnp.arange(8), (4, 8)),
            AttentionMask(key_valid=jnp.ones((4, 8), bool), causal=True)))(layer_state, x)
        assert out.sharding.spec == P("data", None, "tensor")
    np.testing.assert_allclose(logits, jit_method(model, "__call__")(batch), **TOL)


def test_bfloat16_model_compresses_in_bf16_and_returns_float32_logits_from_the_matmul():
    from configs import long_video  # noqa: PLC0415
    from data_pipelines import datasets as data_lib  # noqa: PLC0415
    from frejax.training import train_state  # noqa: PLC0415

    config = long_video.get_config("smoke,ratio=4")  # room for residuals: an absorber
    config.train.dtype = "bfloat16"
    tokenizer = data_lib.make_tokenizer(config)
    model = train_state.create_model(config, tokenizer, seed=0)
    assert model.compressor.dtype == jnp.bfloat16
    assert model.compressor.absorber.dtype == jnp.bfloat16
    frames = jnp.zeros((2, config.data.num_frames, 32, 32, 3), jnp.uint8)
    visual = jit_method(model, "encode_video")(dict(frames=frames, frame_mask=jnp.ones(
        (2, config.data.num_frames), bool)))
    assert visual.tokens.dtype == jnp.bfloat16
    untied = LLM(llm_cfg(tie_embeddings=False), rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    for llm in (model.llm, untied):  # tied and untied heads
        hidden = jax.random.normal(jax.random.key(0), (2, 5, llm.width)).astype(jnp.bfloat16)
        logits = jit_method(llm, "logits")(hidden)
        assert logits.dtype == jnp.float32
        # Accumulated in float32, not rounded to bf16 first: most values fall between
        # bf16 steps.
        rounded = logits.astype(jnp.bfloat16).astype(jnp.float32)
        assert float(jnp.mean(logits != rounded)) > 0.5
