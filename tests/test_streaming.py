"""Long videos chunk by chunk: equal to whole-video Fre-Res, streamed decoding, padding."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_pipelines import video_decode
from compressor_helpers import PAPER
from frejax import config_lib
from frejax.inference import streaming
from frejax.models.video_mllm import VideoMLLM
import video_files

CHUNK = 32   # the model's clip length
GRID = 16    # image 16, patch 4: a 4x4 grid, N = 16


def _model(num_frames: int) -> VideoMLLM:
    cfg = config_lib.base_config().model
    cfg.vision.update(image_size=GRID, patch_size=4, width=32, depth=1, heads=2, mlp_dim=64)
    cfg.llm.update(vocab_size=16, width=16, depth=1, heads=2, kv_heads=1, mlp_dim=32)
    compressor = config_lib.compressor_config("fre_res", ratio=8.0)
    compressor.fre_res.update(PAPER)  # the layout the chunk checks below spell out
    return VideoMLLM(cfg, compressor, num_frames=num_frames, vocab_size=16, video_token_id=1,
                     rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def models():
    """A 32-frame model with random params (the absorber's gate too) and a 96-frame twin."""
    chunk_model, whole_model = _model(CHUNK), _model(3 * CHUNK)
    params = nnx.state(chunk_model, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(params))))
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(next(keys), p.shape), params)
    nnx.update(chunk_model, params)
    nnx.update(whole_model, params)
    return chunk_model, whole_model


def _frames(num: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (num, GRID, GRID, 3), np.uint8)


def test_chunks_equal_the_whole_video_compressed_at_once(models):
    chunk_model, whole_model = models
    # The budget rule gives both the same plan: L = 16, K = 4, 2x2 pooling.
    chunk_plan, whole_plan = chunk_model.compressor.plan, whole_model.compressor.plan
    assert (chunk_plan.segment_len, chunk_plan.num_coeffs, chunk_plan.pool) == (
        whole_plan.segment_len, whole_plan.num_coeffs, whole_plan.pool) == (16, 4, 2)
    frames = _frames(3 * CHUNK)
    chunked = streaming.ChunkedVideoCompressor.from_model(chunk_model)
    got = chunked(streaming.chunk_frames(iter(frames), CHUNK))

    whole = whole_model.compressor(whole_model.encoder(jnp.asarray(frames[None])))
    whole_tokens = np.asarray(whole.tokens[0])
    anchors_per_chunk = chunk_plan.anchor_tokens
    residual_per_chunk = chunk_plan.residual_tokens
    num_anchor = whole_plan.anchor_tokens
    expected = np.concatenate([
        np.concatenate([whole_tokens[c * anchors_per_chunk:(c + 1) * anchors_per_chunk],
                        whole_tokens[num_anchor + c * residual_per_chunk:
                                     num_anchor + (c + 1) * residual_per_chunk]])
        for c in range(3)])
    assert got.tokens.shape == expected.shape == (3 * 64, 32)
    assert got.mask.all()
    # The absorber changed the anchors (its gate is not zero), so the check covers it.
    latents = chunk_model.encoder(jnp.asarray(frames[None, :CHUNK]))
    raw_anchors = chunk_model.compressor.split(latents, jnp.ones((1, CHUNK), bool)).anchors
    assert np.abs(got.tokens[:16] - np.asarray(raw_anchors[0, 0])).max() > 1e-2
    np.testing.assert_allclose(got.tokens, expected, rtol=1e-5, atol=1e-5)
    assert chunked._step._cache_size() == 1  # one program for every chunk


def test_a_ragged_tail_is_padded_and_masked(models):
    chunk_model, _ = models
    frames = _frames(80, seed=1)  # 2.5 chunks: the last holds one valid segment of two
    chunked = streaming.ChunkedVideoCompressor.from_model(chunk_model)
    got = chunked(streaming.chunk_frames(iter(frames), CHUNK))
    prefix = chunked(streaming.chunk_frames(iter(frames[:64]), CHUNK))
    assert got.tokens.shape == (3 * 64, 32)
    assert int(got.mask.sum()) == 80 * 16 // 8
    # Last chunk: the anchors of segment 1, then its residual tokens, are padding.
    np.testing.assert_array_equal(got.mask[128:], np.repeat([True, False, True, False],
                                                            [16, 16, 16, 16]))
    np.testing.assert_allclose(got.tokens[:128], prefix.tokens, rtol=1e-6, atol=1e-6)


def test_chunk_frames_pads_the_last_chunk_and_refuses_an_empty_video():
    frames = _frames(20)
    chunks = list(streaming.chunk_frames(iter(frames), 8))
    assert [int(m.sum()) for _, m in chunks] == [8, 8, 4]
    np.testing.assert_array_equal(np.concatenate([c for c, _ in chunks])[:20], frames)
    assert not chunks[-1][0][4:].any()
    with pytest.raises(ValueError, match="no frames"):
        list(streaming.chunk_frames(iter([]), 8))
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        list(streaming.chunk_frames(iter(frames), 0))


def test_wrong_chunk_length_is_refused(models):
    chunked = streaming.ChunkedVideoCompressor.from_model(models[0])
    with pytest.raises(ValueError, match="chunks must hold 32 frames"):
        chunked([(_frames(16), np.ones((16,), bool))])


def test_memory_analysis_counts_one_chunk(models):
    chunked = streaming.ChunkedVideoCompressor.from_model(models[0])
    memory = chunked.memory_analysis(GRID)
    assert memory["arguments"] >= CHUNK * GRID * GRID * 3  # the chunk's frames at least
    assert memory["outputs"] >= 64 * 32 * 4                 # its float32 tokens


def test_the_streamed_measurement_sees_chunks_kept_on_the_device(models):
    """The scaling benchmark's streamed column is measured: a path that kept each chunk's
    tokens on the device would grow with the video, and the measurement shows it."""
    from frejax.benchmarks import long_video_scaling

    class KeepsChunks(streaming.ChunkedVideoCompressor):
        def iter_tokens(self, chunks):
            self.kept = []
            for frames, mask in chunks:
                self.kept.append(self._device_chunk(frames, mask))
                yield self.kept[-1]

    def peak(cls, num_chunks):
        chunked = cls.from_model(models[0])
        return long_video_scaling._streamed_live_peak(
            chunked, streaming.chunk_frames(iter(_frames(num_chunks * CHUNK)), CHUNK))

    kept_growth = peak(KeepsChunks, 8) - peak(KeepsChunks, 2)
    assert kept_growth >= 6 * 64 * 32 * 4  # six more chunks of 64 float32 tokens of width 32
    assert peak(streaming.ChunkedVideoCompressor, 8) - \
        peak(streaming.ChunkedVideoCompressor, 2) < kept_growth / 4


def test_iter_frames_streams_the_decoded_clip(tmp_path):
    name, container, codec, pix_fmt, width, height, num = video_files.CLIPS[3]  # 20 frames
    path = os.path.join(tmp_path, name)
    video_files.write_clip(path, container, codec, pix_fmt, width, height, num)
    with open(path, "rb") as f:
        data = f.read()
    frames = list(video_decode.iter_frames(data, image_size=16))
    assert len(frames) == num and frames[0].shape == (16, 16, 3)
    # The same frames as a dense decode of the whole clip.
    dense, mask = video_decode.decode_video(
        data, video_decode.FrameSampling(num_frames=num, image_size=16, mode="dense"))
    assert mask.all()
    np.testing.assert_array_equal(np.stack(frames), dense)
    every_third = list(video_decode.iter_frames(data, image_size=16, every=3))
    np.testing.assert_array_equal(np.stack(every_third), dense[::3])
    with pytest.raises(video_decode.VideoDecodeError, match="not_a_video"):
        list(video_decode.iter_frames(b"not a video at all", image_size=16))
    with pytest.raises(video_decode.VideoDecodeError, match="empty_file"):
        list(video_decode.iter_frames(b"", image_size=16))


def test_scaling_benchmark_streamed_memory_is_flat_and_whole_grows():
    from frejax.benchmarks import long_video_scaling
    from configs import long_video

    config = long_video.get_config("smoke")
    config.data.num_frames = 16  # the 16-frame plan (L = 16, K = 4, 2x2 pool) holds at 64
    config.compressor.fre_res.update(PAPER)
    config.compressor.fre_res.time_windows = 1  # (a one-segment clip would otherwise get two)
    rows = long_video_scaling.measure(config, [16, 64], compile_only=False, repeats=1,
                                      max_whole_run=64)
    short, long = rows
    assert long["tokens"] == 4 * short["tokens"]
    # Measured while streaming at each length: 4x the frames, (almost) the same device bytes.
    assert long["streamed"]["live_peak"] <= 1.1 * short["streamed"]["live_peak"]
    assert long["whole"]["peak"] > 2 * short["whole"]["peak"]
    assert all(r[p]["seconds"] > 0 for r in rows for p in long_video_scaling.PATHS)

    # With two time windows the 16-frame clip's plan is not the 64-frame one's: refused.
    config.compressor.fre_res.time_windows = 0
    with pytest.raises(ValueError, match="another compressor layout"):
        long_video_scaling.measure(config, [64], compile_only=True, repeats=1, max_whole_run=0)
