"""LLaVA-OneVision import: video logits equal ``transformers``' ``LlavaOnevisionForConditionalGeneration``
on a tiny random model saved here (float32), through the ``llava=<folder>`` config arg.

The tiny tower has a 5 x 5 patch grid, so the 2x2 bilinear pooling (to 3 x 3) reads
edge cells the way ``torch.nn.functional.interpolate`` does for LLaVA's odd 27 x 27 grid.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common, short_video
from frejax import config_lib
from frejax.models.convert import hf_import
from frejax.models.video_mllm import VideoMLLM
from frejax.nn.grid import bilinear_matrix

import llava_fixtures

VOCAB, VIDEO_ID, FRAMES = 96, 95, 3


def _torch():
    import torch  # noqa: PLC0415  (a test requirement: missing, the test fails)

    return torch


def _tiny_llava(tmp_path, feature_layer):
    folder = str(tmp_path / "llava")
    torch, model = llava_fixtures.tiny_llava(folder, feature_layer, vocab=VOCAB)
    return torch, model, folder


def _frejax_model(folder, compressor="full", ratio=1.0, param_dtype=jnp.float32):
    config = short_video.get_config(f"smoke,llava={folder},compressor={compressor},"
                                    f"frames={FRAMES},ratio={ratio}")
    config_lib.validate(config)
    model = VideoMLLM(config.model, config.compressor, num_frames=FRAMES, vocab_size=VOCAB,
                      video_token_id=VIDEO_ID, rngs=nnx.Rngs(0), param_dtype=param_dtype)
    state = nnx.state(model, nnx.Param)
    params = hf_import.load_pretrained(config, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return config, model


@pytest.mark.parametrize("feature_layer, param_dtype", [(-1, "float32"), (-2, "float32"),
                                                        (-1, "bfloat16")])
def test_video_logits_match_transformers(tmp_path, feature_layer, param_dtype):
    """float32 weights: within 1e-4. bfloat16 weights (half the memory; compute stays
    float32 on CPU): within what rounding every weight to 8 bits of mantissa allows."""
    torch, hf, folder = _tiny_llava(tmp_path, feature_layer)
    config, model = _frejax_model(folder, param_dtype=jnp.dtype(param_dtype))
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == \
        {jnp.dtype(param_dtype)}
    assert config.model.vision.depth == 3 + 1 + feature_layer
    assert not config.model.vision.final_norm and config.model.newline
    assert model.num_visual_tokens == FRAMES * 3 * 3 + 1  # pooled 3 x 3 per frame, the newline

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (1, FRAMES, 70, 70, 3), dtype=np.uint8)
    before, after = [3, 17, 42], [7, 60, 5, 11]
    tokens = np.asarray([before + [VIDEO_ID] + after])
    batch = dict(frames=jnp.asarray(frames), frame_mask=jnp.ones((1, FRAMES), bool),
                 tokens=jnp.asarray(tokens), text_mask=jnp.ones(tokens.shape, bool))
    graphdef, state = nnx.split(model)
    ours = np.asarray(jax.jit(lambda s, b: nnx.merge(graphdef, s)(b))(state, batch))[0]

    m = model.num_visual_tokens
    ids = torch.tensor([before + [VIDEO_ID] * m + after])
    pixels = torch.from_numpy((frames.astype(np.float32) / 255 - 0.5) / 0.5).permute(0, 1, 4, 2, 3)
    with torch.no_grad():
        theirs = hf(input_ids=ids, pixel_values_videos=pixels).logits[0].numpy()
    p = len(before)
    places = list(range(p)) + [p + m - 1] + [p + m + i for i in range(len(after))]
    if param_dtype == "float32":
        np.testing.assert_allclose(ours, theirs[places], atol=1e-4, rtol=1e-4)
    else:
        scale = np.abs(theirs[places]).max()
        error = np.abs(ours - theirs[places]).max() / scale
        assert error < 2e-2, error  # bf16 weights: about 1% of the logits' range
        assert error > 1e-4, error  # the weights really are rounded


def test_bilinear_matrix_is_torch_interpolate():
    torch = _torch()
    for size, out in ((27, 14), (5, 3), (4, 2), (6, 6)):
        x = torch.randn(1, 1, size, 1)
        want = torch.nn.functional.interpolate(x, size=(out, 1), mode="bilinear")[0, 0, :, 0]
        np.testing.assert_allclose(bilinear_matrix(size, out) @ x[0, 0, :, 0].numpy(),
                                   want.numpy(), atol=1e-5)  # float32 rounding


def test_training_free_compressors_read_projected_tokens(tmp_path):
    """With the projector first, every compressor sees LLM-width pooled tokens and the
    newline stays one place after them."""
    _, _, folder = _tiny_llava(tmp_path, -1)
    _, model = _frejax_model(folder, compressor="spatial_pool", ratio=3.0)
    assert model.geometry.embed == 32 and model.geometry.grid == (3, 3)
    assert model.num_visual_tokens == model.compressor.num_tokens + 1
    frames = jnp.zeros((2, FRAMES, 70, 70, 3), jnp.uint8)
    visual = model.encode_video(dict(frames=frames, frame_mask=jnp.ones((2, FRAMES), bool)))
    assert visual.tokens.shape == (2, model.compressor.num_tokens, 32)
    embeds, mask = model.visual_embeds(visual)
    assert embeds.shape == (2, model.num_visual_tokens, 32) and bool(mask[:, -1].all())
    np.testing.assert_allclose(np.asarray(embeds[0, -1]), np.asarray(model.projector.newline[...]))


def test_llava_arg_refuses_other_folders(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="llava=.*no config.json"):
        short_video.get_config(f"smoke,llava={tmp_path / 'x'}")
    (tmp_path / "x" / "config.json").write_text('{"model_type": "qwen2"}')
    with pytest.raises(ValueError, match="expected 'llava_onevision'"):
        short_video.get_config(f"smoke,llava={tmp_path / 'x'}")
    assert "<video>\n{question}" in common.LLAVA_PROMPT
