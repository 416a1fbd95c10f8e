"""Spectra, references and errors of ``frejax.studies.kept_information`` on signals with known answers."""

import numpy as np
import pytest

from frejax.studies import kept_information as info

T, K = 32, 4


def _video(trajectory, n=6, d=5, seed=0):
    """``(T, n, d)``: every (token, channel) follows ``trajectory`` times a random gain."""
    gains = np.random.default_rng(seed).normal(size=(1, n, d))
    return np.asarray(trajectory)[:, None, None] * gains


@pytest.mark.parametrize("k", [0, 2, 5, 17])
def test_pure_tone_puts_all_inter_frame_energy_in_one_coefficient(k):
    residual = info.dct_basis(T - 1)[k]          # inter-frame steps = one DCT basis vector
    z = _video(np.concatenate([[0.0], np.cumsum(residual)]))
    spectrum = info.residual_spectrum(z, "inter_frame")
    assert np.argmax(spectrum) == k
    np.testing.assert_allclose(spectrum[k] / spectrum.sum(), 1.0, atol=1e-9)
    assert info.low_share(spectrum, K) == pytest.approx(1.0 if k < K else 0.0, abs=1e-9)


def test_random_walk_and_white_noise_match_their_expected_spectra():
    rng = np.random.default_rng(0)
    steps = rng.normal(size=(T, 64, 64))
    walk, white = np.cumsum(steps, axis=0), steps
    refs = info.reference_shares(T, K)
    assert refs["flat"] == pytest.approx(K / (T - 1))
    assert refs["random_walk/inter_frame"] == pytest.approx(refs["flat"])  # white steps
    for z, process in ((walk, "random_walk"), (white, "white")):
        for kind in info.RESIDUAL_KINDS:
            measured = info.low_share(info.residual_spectrum(z, kind), K)
            assert measured == pytest.approx(refs[f"{process}/{kind}"], abs=0.02), (process, kind)
    # Subtracting one frame puts the same offset in every step: a walk looks low-frequency.
    assert refs["random_walk/anchor_relative"] > 0.85


def test_expected_spectrum_keeps_the_energy():
    """Parseval: the expected spectrum sums to the trace of the residual covariance."""
    for kind in info.RESIDUAL_KINDS:
        for process in info.PROCESSES:
            op = info.residual_operator(T, kind)
            cov = op @ info.process_covariance(T, process) @ op.T
            assert info.expected_spectrum(T, kind, process).sum() == pytest.approx(np.trace(cov))


def test_static_video():
    z = _video(np.ones(T))
    for kind in info.RESIDUAL_KINDS:
        spectrum = info.residual_spectrum(z, kind)
        assert np.allclose(spectrum, 0) and info.low_share(spectrum, K) == 1.0
    assert info.temporal_share(z) == pytest.approx(0.0)
    batch = z[None]
    assert info.relative_errors(batch, batch)[0] == 0.0
    assert np.isinf(info.relative_errors(batch, batch * 0.5)[0])


def test_relative_error_of_the_temporal_mean_is_one():
    z = np.random.default_rng(1).normal(size=(2, T, 4, 3))
    mean = np.broadcast_to(z.mean(axis=1, keepdims=True), z.shape)
    np.testing.assert_allclose(info.relative_errors(z, mean), 1.0)
    np.testing.assert_allclose(info.relative_errors(z, z), 0.0)


def test_temporal_share_of_a_moving_part():
    z = np.zeros((T, 2, 1))
    z[:, 0, 0] = 1.0                          # static token
    z[:, 1, 0] = np.where(np.arange(T) % 2, 1.0, -1.0)  # flickering token, mean 0
    # Per-channel mean 0.5 over (t, n): total = 16*... computed directly.
    total = np.sum(np.square(z - z.mean(axis=(0, 1), keepdims=True)))
    assert info.temporal_share(z) == pytest.approx(T / total)


def _scene(seed, t):
    """A smooth textured scene drifting one pixel per frame, ``(32, 32, 3)`` uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:32, :32] / 32.0
    image = sum(np.sin(2 * np.pi * (fx * (x + t / 32.0) + fy * y) + rng.uniform(0, 6.3))
                for fx, fy in rng.integers(1, 3, (3, 2)))
    grey = 128 + 40 * image
    return np.repeat(np.clip(grey, 0, 255)[..., None], 3, axis=-1).astype(np.uint8)


def test_shots_split_at_hard_cuts_only():
    frames = np.stack([_scene(0 if t < 25 else 1, t) for t in range(60)])
    assert info.detect_shots(info.frame_differences(frames)) == [(0, 25), (25, 60)]
    assert info.detect_shots(info.frame_differences(frames[:25])) == [(0, 25)]


def test_windows_stay_inside_shots_and_do_not_overlap():
    wins = info.windows([(0, 25), (25, 100)], frames=8, stride=3)
    for w in wins:
        assert len(w) == 8 and np.all(np.diff(w) == 3)
        assert (w[0] >= 25) == (w[-1] >= 25)   # one shot
    used = np.concatenate(wins)
    assert len(used) == len(set(used.tolist()))
    assert [int(w[0]) for w in wins] == [0, 1, 2, 25, 49, 73, 26, 50, 74, 27, 51, 75]


def test_fast_motion_is_not_a_cut():
    """Steady large changes (fast motion) stay one shot; only a jump out of line with its
    neighbours is a cut."""
    d = np.full(40, 0.12)
    d[19] = 0.9
    assert info.detect_shots(d) == [(0, 20), (20, 41)]


def test_low_res_residuals_rebuild_is_exact_when_the_change_is_coarse():
    from frejax.studies import latent_cache
    from frejax.studies import low_res_residuals as lrr

    assert lrr.anchors(20, 8).tolist() == [3] * 8 + [11] * 8 + [17] * 4  # middle of each
    rng = np.random.default_rng(0)
    T, D = 20, 3
    static = rng.normal(size=(16, D))                 # fine detail on a 4 x 4 grid
    change = rng.normal(size=(T, 4, D))               # change over time on a 2 x 2 grid
    full = static[None] + lrr.upsample(change, (2, 2), (4, 4))
    # The reduced encoder sees the change plus its own (coarse) view of the detail.
    low = change + latent_cache.pool_latents(static[None], (4, 4), 2, "area")
    rebuilt = lrr.rebuild(full, low, (2, 2), (4, 4), segment_len=8)
    np.testing.assert_allclose(rebuilt, full, atol=1e-12)
    # Without a full-resolution anchor the fine detail is lost: error above zero.
    low_only = lrr.upsample(low, (2, 2), (4, 4))
    assert info.relative_errors(full[None], low_only[None])[0] > 0.1
    up = lrr.upsample(change, (2, 2), (4, 4))
    assert latent_cache.pool_latents(up, (4, 4), 2, "area").shape == change.shape
    np.testing.assert_allclose(latent_cache.pool_latents(up, (4, 4), 2, "area"), change)
    with pytest.raises(ValueError, match="does not divide"):
        lrr.upsample(change, (3, 3), (4, 4))
