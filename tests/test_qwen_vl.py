"""Qwen2.5-VL and Qwen3-VL: video logits equal transformers' on tiny random folders; positions.

The weights are redrawn at unit gain (transformers' 0.02 init hides wrong orders in
rounding), so a wrong rotary section, patch order or window mask moves the logits by
far more than the tolerance; ``test_a_planted_break_fails_parity`` shows it.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from frejax import compression  # noqa: E402
from frejax.models import llm as llm_lib  # noqa: E402
from frejax.models import qwen_vl  # noqa: E402
from frejax.models.convert import qwen_vl_import  # noqa: E402

FRAMES, SIZE = 4, 32          # 2 temporal patches of an 8 x 8 patch grid
VIDEO_TOKEN = 120


def _hf_config():
    return transformers.Qwen2_5_VLConfig(
        vision_config=dict(depth=3, hidden_size=32, intermediate_size=48, num_heads=2,
                           patch_size=4, temporal_patch_size=2, spatial_merge_size=2,
                           window_size=16, out_hidden_size=64, fullatt_block_indexes=[1],
                           tokens_per_second=2),
        text_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         rope_parameters=dict(rope_type="default", rope_theta=10_000.0,
                                              mrope_section=[2, 3, 3]),
                         max_position_embeddings=512),
        video_token_id=VIDEO_TOKEN, image_token_id=121, vision_start_token_id=122,
        vision_end_token_id=123, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.Qwen2_5_VLForConditionalGeneration(_hf_config()).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm1.weight") or "norm" in name or "ln_q" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(fan_in))
    path = tmp_path_factory.mktemp("qwen2_5_vl")
    model.save_pretrained(path, safe_serialization=True)
    return str(path), model


def _inputs(cfg):
    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 1, (1, FRAMES, SIZE, SIZE, 3)).astype(np.float32)
    patches = qwen_vl.patchify(qwen_vl.normalize(jnp.asarray(frames)), cfg)
    grid = qwen_vl.frames_to_grid(frames.shape, cfg)
    span = qwen_vl.VideoSpan(FRAMES // cfg.temporal_patch, grid[0] // cfg.merge,
                             grid[1] // cfg.merge, interval=2.0)
    tokens = np.concatenate([rng.integers(0, 100, 5), np.full(span.tokens, VIDEO_TOKEN),
                             rng.integers(0, 100, 6)])[None]
    positions = qwen_vl.rope_index(qwen_vl.video_spans(tokens[0], VIDEO_TOKEN, [span]))
    return patches, grid, span, tokens, positions


def _hf_logits(model, patches, grid, tokens, positions):
    g = patches.shape[1]
    with torch.no_grad():
        out = model(input_ids=torch.tensor(np.asarray(tokens)),
                    pixel_values_videos=torch.tensor(np.asarray(patches).reshape(-1, patches.shape[-1])),
                    video_grid_thw=torch.tensor([[g, grid[0], grid[1]]]),
                    position_ids=torch.tensor(np.asarray(positions).T[:, None, :]))
    return out.logits.numpy()


def test_vision_tower_and_video_logits_match_transformers(folder):
    path, hf = folder
    model = qwen_vl_import.load(path)
    cfg = model.encoder.cfg
    patches, grid, span, tokens, positions = _inputs(cfg)
    with torch.no_grad():
        want = hf.model.visual(torch.tensor(np.asarray(patches).reshape(-1, cfg.patch_dim)),
                               grid_thw=torch.tensor([[patches.shape[1], *grid]])).pooler_output
    got = model.encoder(patches, grid)
    assert got.shape == (1, span.groups, span.rows * span.cols, 64)
    np.testing.assert_allclose(np.asarray(got).reshape(-1, 64), want.numpy(), atol=1e-4, rtol=1e-4)
    logits = model(jnp.asarray(tokens), patches, grid, positions=jnp.asarray(positions)[None])
    np.testing.assert_allclose(np.asarray(logits), _hf_logits(hf, patches, grid, tokens, positions),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("plant", ["rope_sections", "patch_order", "no_windows"])
def test_a_planted_break_fails_parity(folder, plant, monkeypatch):
    path, hf = folder
    model = qwen_vl_import.load(path, scan_layers=False)
    cfg = model.encoder.cfg
    patches, grid, span, tokens, positions = _inputs(cfg)
    want = _hf_logits(hf, patches, grid, tokens, positions)
    if plant == "rope_sections":           # height and time frequencies swapped
        axes = tuple({0: 1, 1: 0, 2: 2}[a] for a in model.llm.rope_axes)
        for layer in model.llm.layers:
            layer.attn.rope_axes = axes
    elif plant == "patch_order":           # row-major patches instead of merge blocks
        patches = patches.reshape(1, 2, 4, 4, 2, 2, -1).transpose(0, 1, 2, 4, 3, 5, 6)
        patches = patches.reshape(1, 2, 64, -1)
    else:                                  # every block attends to the whole frame
        model.encoder.cfg = dataclasses.replace(cfg, full_blocks=tuple(range(cfg.depth)))
    got = np.asarray(model(jnp.asarray(tokens), patches, grid,
                           positions=jnp.asarray(positions)[None]))
    assert np.abs(got - want).max() > 1e-2


def test_rope_index_follows_the_released_rule():
    # 3 text tokens, a video of 2 groups of 2 x 3 tokens 4 steps apart, 2 text tokens.
    span = qwen_vl.VideoSpan(2, 2, 3, interval=4.0)
    pos = qwen_vl.rope_index([3, span, 2])
    np.testing.assert_array_equal(pos[:3], [[0, 0, 0], [1, 1, 1], [2, 2, 2]])
    video = pos[3:15].reshape(2, 2, 3, 3)
    np.testing.assert_array_equal(video[:, 0, 0, 0], [3, 7])            # time: start + 4 g
    np.testing.assert_array_equal(video[0, :, 0, 1], [3, 4])            # rows
    np.testing.assert_array_equal(video[0, 0, :, 2], [3, 4, 5])         # columns
    # Text goes on one past the largest position, here the last group's time.
    np.testing.assert_array_equal(pos[15:], [[8, 8, 8], [9, 9, 9]])
    with pytest.raises(ValueError, match="4 video tokens at 1, the video has 12"):
        qwen_vl.video_spans(np.array([0, 9, 9, 9, 9, 0]), 9, [span])


def test_rope_index_matches_transformers_where_their_rules_agree(folder):
    # transformers 5 continues text after a video at start + max(rows, cols) instead of
    # one past the largest position (the released rule, and transformers 4's); the two
    # agree while the video's time positions stay below its rows and columns.
    _, hf = folder
    tokens = np.array([[1, 2, VIDEO_TOKEN, VIDEO_TOKEN, VIDEO_TOKEN, VIDEO_TOKEN, 3]])
    want, _ = hf.model.get_rope_index(
        torch.tensor(tokens), mm_token_type_ids=torch.tensor((tokens == VIDEO_TOKEN) * 2),
        video_grid_thw=torch.tensor([[1, 4, 4]]), second_per_grid_ts=torch.tensor([1.0]))
    got = qwen_vl.rope_index(qwen_vl.video_spans(tokens[0], VIDEO_TOKEN,
                                                 [qwen_vl.VideoSpan(1, 2, 2, interval=2.0)]))
    np.testing.assert_array_equal(got.T, want.numpy()[:, 0])


@pytest.mark.parametrize("interleaved", [False, True])
def test_mrope_axes_match_transformers_frequency_layout(interleaved):
    sections = (24, 20, 20) if interleaved else (16, 24, 24)
    axes = llm_lib.mrope_axes(128, sections, interleaved)
    # Which of three position rows each frequency reads, as transformers composes them.
    freqs = torch.arange(3)[:, None].expand(3, 64).clone().float()       # row r holds r
    if interleaved:
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding
        rot = Qwen3VLTextRotaryEmbedding.__new__(Qwen3VLTextRotaryEmbedding)
        rot.mrope_section = list(sections)
        want = rot.recomposition_frequencies(freqs.clone())[:64]
    else:
        want = torch.cat([m[i % 3] for i, m in enumerate(freqs.split(list(sections), dim=-1))])
    np.testing.assert_array_equal(axes, want.numpy().astype(int))
    # A text token (three equal coordinates) rotates as under plain RoPE.
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5, 2, 128)), jnp.float32)
    pos = jnp.arange(5)[None]
    np.testing.assert_allclose(
        llm_lib.apply_rope(x, jnp.repeat(pos[..., None], 3, -1), 1e4, axes=axes),
        llm_lib.apply_rope(x, pos, 1e4), atol=1e-6)


def test_mrope_sections_are_checked_naming_the_key():
    from frejax import config_lib
    c = config_lib.base_config()
    c.model.llm.update(width=64, heads=4, mrope_sections=(2, 3, 4))     # head_dim 16: 8 freqs
    with pytest.raises(ValueError, match=r"config\.model\.llm\.mrope_sections \(2, 3, 4\)"):
        config_lib.validate(c)
    c.model.llm.mrope_sections = (2, 3, 3)
    config_lib.validate(c)


def test_positions_under_jit_follow_the_rule_and_reproduce_transformers(folder):
    path, hf = folder
    model = qwen_vl_import.load(path)
    patches, grid, span, tokens, positions = _inputs(model.encoder.cfg)
    # Places count temporal patches; the interval turns them into position steps.
    full = jnp.asarray(qwen_vl.rope_index([dataclasses.replace(span, interval=1.0)]),
                       jnp.float32)[None]
    got = jax.jit(qwen_vl.prompt_positions, static_argnums=(1, 3))(
        jnp.asarray(tokens), VIDEO_TOKEN, full, 2.0)
    np.testing.assert_array_equal(np.asarray(got[0]), positions)
    logits = model(jnp.asarray(tokens), patches, grid, interval=2.0)
    np.testing.assert_allclose(np.asarray(logits), _hf_logits(hf, patches, grid, tokens, positions),
                               atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def imported(folder):
    return qwen_vl_import.load(folder[0])


@pytest.mark.parametrize("name", compression.names())
def test_every_compressor_runs_on_qwen_and_kept_tokens_keep_their_positions(imported, name):
    model = imported
    patches, grid, span, _, _ = _inputs(model.encoder.cfg)
    geometry = compression.VideoGeometry(span.groups, (span.rows, span.cols), 64)
    budget = geometry.full_tokens if name == "full" else geometry.full_tokens // 2
    comp = compression.build(name, geometry, budget, rngs=nnx.Rngs(0))
    tokens = np.concatenate([np.arange(5), np.full(budget, VIDEO_TOKEN), np.arange(6)])[None]
    logits = model(jnp.asarray(tokens), patches, grid, interval=2.0, compressor=comp)
    assert logits.shape == (1, tokens.shape[1], 128) and np.isfinite(np.asarray(logits)).all()
    video = model.encoder(patches, grid)
    places = np.asarray(comp.places(video))[0]
    valid = np.asarray(comp(video).mask)[0]
    pos = np.asarray(qwen_vl.prompt_positions(jnp.asarray(tokens), VIDEO_TOKEN,
                                              jnp.asarray(places)[None], 2.0))[0]
    vid = pos[5:5 + budget]
    np.testing.assert_allclose(vid, 5 + places * [2.0, 1.0, 1.0])
    # Text after the video goes on one past the largest position of a valid video token.
    assert (pos[5 + budget] == vid[valid].max() + 1).all()
    if name in ("full", "uniform_frames", "evs", "frame_budgets"):
        # A kept token's position is its position in the uncompressed prompt.
        full = 5 + qwen_vl.rope_index([qwen_vl.VideoSpan(span.groups, span.rows, span.cols,
                                                         interval=2.0)])
        flat = (places[:, 0] * span.rows * span.cols + places[:, 1] * span.cols
                + places[:, 2]).astype(int)
        np.testing.assert_array_equal(vid[valid], full[flat[valid]])
        source = np.asarray(video).reshape(-1, 64)[flat[valid]]
        np.testing.assert_array_equal(np.asarray(comp(video).tokens)[0][valid], source)


# ----------------------------------------------------------------------------- Qwen3-VL


def _hf3_config():
    return transformers.Qwen3VLConfig(
        vision_config=dict(depth=3, hidden_size=32, intermediate_size=48, num_heads=2,
                           patch_size=4, temporal_patch_size=2, spatial_merge_size=2,
                           out_hidden_size=64, num_position_embeddings=36,
                           deepstack_visual_indexes=[0, 1]),
        text_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, max_position_embeddings=512,
                         rope_parameters=dict(rope_type="default", rope_theta=10_000.0,
                                              mrope_section=[4, 2, 2], mrope_interleaved=True)),
        video_token_id=VIDEO_TOKEN, image_token_id=121, vision_start_token_id=122,
        vision_end_token_id=123, tie_word_embeddings=False)


def _redraw(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.copy_((1 if name.endswith("weight") else 0) + 0.3 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif "pos_embed" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(fan_in))


@pytest.fixture(scope="module")
def folder3(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.Qwen3VLForConditionalGeneration(_hf3_config()).eval()
    _redraw(model, 2)
    path = tmp_path_factory.mktemp("qwen3_vl")
    model.save_pretrained(path, safe_serialization=True)
    return str(path), model


def _qwen3_inputs(cfg):
    """Qwen3-VL's video prompt: each temporal patch its own block after its timestamp."""
    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 1, (1, FRAMES, SIZE, SIZE, 3)).astype(np.float32)
    patches = qwen_vl.patchify(qwen_vl.normalize(jnp.asarray(frames)), cfg)
    grid = qwen_vl.frames_to_grid(frames.shape, cfg)
    block = qwen_vl.VideoSpan(1, grid[0] // cfg.merge, grid[1] // cfg.merge)
    segments, tokens = [], []
    for g in range(patches.shape[1]):
        stamp = list(rng.integers(0, 100, 3))                    # "<0.5 seconds>"
        segments += [len(stamp), block]
        tokens += stamp + [VIDEO_TOKEN] * block.tokens
    segments.append(4)
    tokens += list(rng.integers(0, 100, 4))
    return patches, grid, np.asarray(tokens)[None], qwen_vl.rope_index(segments)


def test_qwen3_vl_video_logits_match_transformers(folder3):
    path, hf = folder3
    model = qwen_vl_import.load(path)
    cfg = model.encoder.cfg
    assert cfg.family == "qwen3_vl" and cfg.deepstack == (0, 1) and model.llm.rope_axes
    patches, grid, tokens, positions = _qwen3_inputs(cfg)
    with torch.no_grad():
        out = hf.model.visual(torch.tensor(np.asarray(patches).reshape(-1, cfg.patch_dim)),
                              grid_thw=torch.tensor([[patches.shape[1], *grid]]))
    got, deep = model.encoder(patches, grid, with_deepstack=True)
    np.testing.assert_allclose(np.asarray(got).reshape(-1, 64), out.pooler_output.numpy(),
                               atol=1e-4, rtol=1e-4)
    assert len(deep) == len(out.deepstack_features) == 2
    for ours, theirs in zip(deep, out.deepstack_features):
        np.testing.assert_allclose(np.asarray(ours).reshape(-1, 64), theirs.numpy(), atol=1e-4,
                                   rtol=1e-4)
    logits = model(jnp.asarray(tokens), patches, grid, positions=jnp.asarray(positions)[None])
    np.testing.assert_allclose(np.asarray(logits), _hf_logits(hf, patches, grid, tokens, positions),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("plant", ["sectioned_rope", "no_deepstack", "table_half_pixel"])
def test_a_planted_qwen3_break_fails_parity(folder3, plant, monkeypatch):
    path, hf = folder3
    model = qwen_vl_import.load(path, scan_layers=False)
    patches, grid, tokens, positions = _qwen3_inputs(model.encoder.cfg)
    want = _hf_logits(hf, patches, grid, tokens, positions)
    if plant == "sectioned_rope":          # Qwen2.5-VL's layout instead of interleaved
        axes = llm_lib.mrope_axes(16, (4, 2, 2), interleaved=False)
        for layer in model.llm.layers:
            layer.attn.rope_axes = axes
    elif plant == "no_deepstack":
        model.encoder.cfg = dataclasses.replace(model.encoder.cfg, deepstack=())
    else:                                  # the table resampled with half-pixel centres
        def half_pixel(size, side):
            src = np.clip((np.arange(size) + 0.5) * side / size - 0.5, 0, side - 1)
            low = np.floor(src).astype(int)
            out = np.zeros((size, side), np.float32)
            out[np.arange(size), low] += 1 - (src - low)
            out[np.arange(size), np.minimum(low + 1, side - 1)] += src - low
            return out
        monkeypatch.setattr(qwen_vl, "bilinear_corners", half_pixel)
    got = np.asarray(model(jnp.asarray(tokens), patches, grid,
                           positions=jnp.asarray(positions)[None]))
    assert np.abs(got - want).max() > 1e-2


@pytest.fixture(scope="module")
def imported3(folder3):
    return qwen_vl_import.load(folder3[0])


@pytest.mark.parametrize("name", compression.names())
def test_every_compressor_runs_on_qwen3_vl_with_its_deepstack_features(imported3, name):
    """DeepStack features go through the compressor with the merged tokens (extra channels):
    ``full`` gives the uncompressed logits, and a kept token keeps its own features."""
    model = imported3
    patches, grid, span, _, _ = _inputs(model.encoder.cfg)
    video, deep = model.encoder(patches, grid, with_deepstack=True)
    k, d = deep.shape[0], video.shape[-1]
    geometry = compression.VideoGeometry(span.groups, (span.rows, span.cols), (1 + k) * d)
    budget = geometry.full_tokens if name == "full" else geometry.full_tokens // 2
    comp = compression.build(name, geometry, budget, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.concatenate([np.arange(5), np.full(budget, VIDEO_TOKEN),
                                         np.arange(6)])[None])
    logits = np.asarray(model(tokens, patches, grid, interval=2.0, compressor=comp))
    assert logits.shape == (1, tokens.shape[1], 128) and np.isfinite(logits).all()
    kept, kept_deep, places, valid = qwen_vl.compress_with_deepstack(comp, video, deep)
    assert kept.shape == (1, budget, d) and kept_deep.shape == (k, 1, budget, d)
    if name == "full":
        np.testing.assert_allclose(logits, np.asarray(model(tokens, patches, grid, interval=2.0)),
                                   atol=1e-5, rtol=1e-5)
    if name in ("full", "uniform_frames", "evs", "frame_budgets"):
        places, valid = np.asarray(places)[0], np.asarray(valid)[0]
        flat = (places[:, 0] * span.rows * span.cols + places[:, 1] * span.cols
                + places[:, 2]).astype(int)[valid]
        np.testing.assert_array_equal(np.asarray(kept)[0][valid],
                                      np.asarray(video).reshape(-1, d)[flat])
        np.testing.assert_array_equal(np.asarray(kept_deep)[:, 0][:, valid],
                                      np.asarray(deep).reshape(k, -1, d)[:, flat])
