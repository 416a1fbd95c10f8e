"""Dense-video QA: the benchmark's answers, splits by source, frame times, the cache, a study slice."""

import fractions
import json
import os

import av
import numpy as np
import pytest

from configs import dense_video as dense_video_config
from data_pipelines import dense_video_qa as dq
from data_pipelines import latent_source, video_decode
from data_pipelines.natural_video_qa import write_video
from frejax import config_lib
from frejax.benchmarks import dense_ttft
from frejax.studies import dense_video, dense_video_report, frozen_encoder, latent_cache

SIZE, T = 56, 32


def _write_vfr(path, times, size=32):
    """A video whose frames come at the given times (seconds): variable frame rate."""
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=1000)
        s.width = s.height = size
        s.pix_fmt = "yuv444p"
        s.time_base = fractions.Fraction(1, 1000)
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), (i * 20) % 256, np.uint8),
                                               format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), s.time_base
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def test_frame_times_come_from_timestamps_in_a_variable_rate_file(tmp_path):
    times = [0.0, 0.05, 0.1, 0.5, 0.55, 1.0, 1.6, 1.65, 2.0]
    _write_vfr(tmp_path / "vfr.mp4", times)
    frames, got = video_decode.decode_timed((tmp_path / "vfr.mp4").read_bytes(), 16)
    np.testing.assert_allclose(got, times, atol=2e-3)
    assert frames.shape == (9, 16, 16, 3)
    assert video_decode.effective_fps(got) == pytest.approx(8 / 2.0, rel=1e-2)
    # Two frames per second by time, not every k-th frame: nearest to 0, 0.5, 1, 1.5, 2.
    np.testing.assert_array_equal(video_decode.resample_by_time(got, 2.0), [0, 3, 5, 6, 8])


def test_uniform_sampling_of_a_variable_rate_file_is_even_in_time(tmp_path):
    times = [0.0, 0.05, 0.1, 0.5, 0.55, 1.0, 1.6, 1.65, 2.0]
    _write_vfr(tmp_path / "vfr.mp4", times)
    data = (tmp_path / "vfr.mp4").read_bytes()
    frames, mask = video_decode.decode_video(data, video_decode.FrameSampling(4, 16))
    # Bins of 0.55 s over [0, 2.2): the frames showing at 0.275, 0.825, 1.375, 1.925 s
    # (by frame count it would be frames 1, 3, 5, 7).
    assert mask.all()
    np.testing.assert_array_equal(frames[:, 0, 0, 0] // 20, [2, 4, 5, 7])
    # A constant rate: the same frames as sampling by index.
    idx = video_decode.uniform_by_time(np.arange(50) / 25.0, 16)
    np.testing.assert_array_equal(idx, video_decode.sample_indices(50, 16, "uniform"))


def test_the_model_free_analysis_samples_a_variable_rate_file_by_time(tmp_path):
    from frejax.studies import analyze
    times = [0.0, 0.05, 0.1, 0.5, 0.55, 1.0, 1.6, 1.65, 2.0]
    _write_vfr(tmp_path / "vfr.mp4", times, size=28)
    encoder = frozen_encoder.Encoder("pixels", 28)
    every = analyze.load_clip(str(tmp_path / "vfr.mp4"), encoder, str(tmp_path), fps=0.0)
    by_time = analyze.load_clip(str(tmp_path / "vfr.mp4"), encoder, str(tmp_path), fps=2.0)
    assert len(every.latents) == 9 and every.fps == pytest.approx(4.0, rel=1e-2)
    assert len(by_time.latents) == 5 and by_time.fps == pytest.approx(2.0, rel=1e-2)
    np.testing.assert_array_equal(by_time.latents, every.latents[[0, 3, 5, 6, 8]])


def _photo(path, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    with av.open(str(path), "w", format="image2") as c:
        s = c.add_stream("png", rate=1)
        s.width, s.height, s.pix_fmt = 120, 90, "rgb24"
        for packet in s.encode(frame):
            c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return str(path)


def _sources(tmp_path) -> dq.Sources:
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 200, (1, SIZE, SIZE, 3), dtype=np.uint8).repeat(40, 0)
    write_video(str(folder / "fast.mp4"), clip, rate=25)
    write_video(str(folder / "slow.mp4"), clip, rate=5)          # below --min_fps: skipped
    write_video(str(folder / "held.mp4"), clip, rate=25)
    photos = [_photo(folder / f"p{i}.png", i) for i in range(6)]
    return dq.Sources(videos=(str(folder / "fast.mp4"), str(folder / "slow.mp4")),
                      photos=tuple(photos[:4]), test_videos=(str(folder / "held.mp4"),),
                      test_photos=tuple(photos[4:]))


def _clips(tmp_path, select_fraction=0.3):
    return dq.load_clips(_sources(tmp_path), size=SIZE, frames=T, min_fps=15, camera_clips=1,
                         camera_frames=48, select_fraction=select_fraction, seed=0,
                         log=lambda *_: None)


def test_splits_are_by_source_and_slow_footage_is_a_counted_skip(tmp_path):
    clips, skipped = _clips(tmp_path)
    assert skipped == [dict(source="slow.mp4", reason="5.0 fps is below --min_fps=15")]
    owners = {s: {c.source for c in clips[s]} for s in dq.SPLITS}
    assert not (owners["train"] & owners["select"]) and not (owners["train"] & owners["test"])
    assert owners["test"] == {"held.mp4", "p4.png", "p5.png"}
    table = dq.source_table(clips)
    assert table["fast.mp4"]["fps"] == pytest.approx(25.0, rel=1e-2)
    assert table["p0.png"]["fps"] == dq.CAMERA_FPS and table["p0.png"]["frames"] == 48
    # A larger training split leaves the examples settings are chosen and reported on.
    small, large = (dq.plan_splits(clips, dict(train=n, select=2, test=2), frames=T, size=SIZE,
                                   side=8, seed=0) for n in (1, 3))
    assert len(large["train"]) == 3 * len(small["train"])
    for split in ("select", "test"):
        assert [e.to_json() for e in small[split]] == [e.to_json() for e in large[split]]
    with pytest.raises(ValueError, match="both training and test"):
        dq.load_clips(dq.Sources(videos=("a/x.mp4",), test_videos=("b/x.mp4",)), size=SIZE,
                      frames=T, min_fps=15, camera_clips=1, camera_frames=48,
                      select_fraction=0.3, seed=0)


def test_camera_motion_moves_over_the_photograph():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)
    frames = dq.camera_clip(photo, SIZE, 64, np.random.default_rng(1))
    assert frames.shape == (64, SIZE, SIZE, 3)
    changed = np.abs(np.diff(frames.astype(int), axis=0)).mean(axis=(1, 2, 3))
    assert (changed > 0).mean() > 0.5                      # the camera moves most of the time


def _shown(ex: dq.Example) -> list[tuple[int, int, int, int]]:
    return [(k, r, c, m.colour) for m in ex.marks for k, r, c in zip(m.frames, m.rows, m.cols)]


@pytest.mark.parametrize("family", dq.FAMILIES)
def test_every_planned_answer_follows_from_its_squares(family):
    rng = np.random.default_rng(3)
    examples = dq.plan([200, 60], family, 24, 48, SIZE, 8, rng)
    answers = sorted({ex.answer for ex in examples})
    assert answers == list(range(len(dq.QUESTIONS[family][1])))      # balanced options
    background = np.zeros((200, SIZE, SIZE, 3), np.uint8)
    for ex in examples:
        frames = dq.render(ex, background, 48)
        lit = [k for k in range(48) if frames[k].any()]
        if family == "brief_event":
            assert 1 <= len(lit) <= 3 and lit[0] // 16 == ex.answer
        elif family == "counting":
            runs = 1 + sum(b - a > 1 for a, b in zip(lit, lit[1:]))
            assert runs == ex.answer + 1
        elif family == "fast_motion":
            (m,) = ex.marks
            along = m.cols if ex.answer < 2 else m.rows
            assert 4 <= len(lit) <= 8 and (along[-1] < along[0]) == (ex.answer in (0, 2))
        elif family == "event_order":
            first = min(_shown(ex))
            assert first[3] == ex.answer and len({m.colour for m in ex.marks}) == 2
        elif family == "static_detail":
            assert lit == list(range(48)) and ex.marks[0].colour == ex.answer
        assert all(k < 48 for k in ex.frames_touched())


def test_the_cache_holds_the_encoding_of_every_rendered_window(tmp_path):
    encoder = frozen_encoder.Encoder("pixels", SIZE)
    spec = latent_cache.DenseSpec(frames=T, size=SIZE, pool=2, camera_clips=1,
                                  camera_frames=48, select_fraction=0.3, train_per_family=2,
                                  select_per_family=1, test_per_family=1)
    sources = _sources(tmp_path)
    folder = latent_cache.build_dense(sources, str(tmp_path / "cache"), encoder, spec,
                                      log=lambda *_: None)
    info = latent_source.manifest(folder)
    assert info["grid"] == [2, 2] and set(info["splits"]) == set(dq.SPLITS)
    assert info["skipped"][0]["source"] == "slow.mp4"
    clips, _ = dq.load_clips(sources, size=SIZE, frames=T, min_fps=15, camera_clips=1,
                             camera_frames=48, select_fraction=0.3, seed=0, log=lambda *_: 0)
    planned = dq.plan_splits(clips, dict(train=2, select=1, test=1), frames=T, size=SIZE,
                             side=SIZE // 4, seed=0)
    split = latent_source.load(folder, "test")
    for i, ex in enumerate(planned["test"]):
        window = dq.render(ex, clips["test"][ex.clip].frames, T)
        want = latent_cache.pool_latents(encoder(window), encoder.grid, 2, "area")
        np.testing.assert_allclose(np.asarray(split.latents[i], np.float32), want, atol=2e-3)
        assert split.examples[i]["family"] == ex.family
    assert latent_cache.build_dense(sources, str(tmp_path / "cache"), encoder,
                                    spec) == folder                      # built once
    # The loop evaluates the split the config names, and no other.
    config = dense_video_config.get_config(f"smoke,cache={folder}")
    config.data.update(num_frames=T, image_size=SIZE)
    config.model.vision.width = 3 * 14 * 14                        # raw 14 x 14 patches
    config.data.latents.eval_split = "select"
    assert len(latent_source.make_source(config, "eval", 100)) == 5
    config.data.latents.eval_split = "train"
    with pytest.raises(ValueError, match=r"data\.latents\.eval_split.*'select', 'test'"):
        latent_source.make_source(config, "eval", 100)


def test_the_config_evaluates_the_test_split_without_redraws():
    c = dense_video_config.get_config("smoke,cache=/c")
    assert c.data.latents.eval_split == "test" and not c.data.latents.redraw
    config_lib.validate(c)


def test_report_pairs_seeds_and_gates_retention_on_the_ceiling():
    meta = dict(groups=dq.GROUPS, families=list(dq.FAMILIES), reference="uniform_frames",
                baselines=["evs"], sparse_frames=16, frames=128, encoder_flops_per_frame=1e9)

    def record(run, acc, groups):
        fam = {f: groups[g] for g, fs in dq.GROUPS.items() for f in fs}
        return dict(run=run, accuracy=acc, accuracy_by_family=fam, visual_tokens=64,
                    visual_tokens_used=64, flops=dict(prefill=1.0, compressor=0.1), seconds=1)

    high = dict(brief=0.95, fast_motion=0.95, order=0.92, static=0.99)
    records = [record(f"ceiling/seed{s}", 0.95, high) for s in range(2)]
    for s, (u, f, e) in enumerate(((0.5, 0.9, 0.6), (0.6, 0.93, 0.7))):
        records.append(record(f"adapted/uniform_frames@8x/seed{s}", u,
                              dict(brief=0.4, fast_motion=0.3, order=0.5, static=0.99)))
        records.append(record(f"adapted/fre_res@8x/seed{s}", f,
                              dict(brief=0.9, fast_motion=0.9, order=0.9, static=0.98)))
        records.append(record(f"adapted/evs@8x/seed{s}", e, high))
    records.append(record("select:adapted/fre_res:paper@8x/seed0", 0.7, high))
    summary = dense_video_report.summarize(records, meta)
    assert summary["learned"] and summary["selection"] == {"fre_res:paper": 0.7}
    fre = next(r for r in summary["rows"] if r["method"] == "fre_res")
    assert fre["vs_reference"][0] == pytest.approx(0.365) and fre["vs_reference"][2] == 2
    assert fre["best_baseline"] == "evs" and fre["vs_best_baseline"][0] == pytest.approx(0.265)
    assert fre["retained"][0] == pytest.approx(np.mean([0.9, 0.93]) / 0.95)
    assert fre["encoder_flops"] == 128e9
    assert next(r for r in summary["rows"] if r["method"] == "uniform_frames")[
        "encoder_flops"] == 16e9
    checks = {c["what"].split(" vs")[0]: c["met"] for c in dense_video_report.goals(summary)[0][
        "checks"]}
    assert checks["brief"] and checks["fast_motion"] and checks["static detail"]
    # A ceiling below the bar on one group: no retention figure at all.
    records[0]["accuracy_by_family"]["event_order"] = 0.6
    low = dense_video_report.summarize(records, meta)
    assert not low["learned"] and low["failing"] == ["order"]
    assert all("retained" not in r for r in low["rows"])


def test_a_study_slice_runs_every_part_through_the_loop_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(dense_video, "CANDIDATES", {"fre_res": {},
                                                    "fre_res:paper": dense_video.PAPER})
    monkeypatch.setattr(dense_video, "PLACES", {})   # test_the_place_rules_are_candidates...
    monkeypatch.setattr(dense_video, "BASELINES", ("evs",))
    monkeypatch.setattr(dense_video, "methods", lambda selected: [
        dense_video.Method("uniform_frames", "uniform_frames"),
        dense_video.Method("fre_res:selected", "fre_res", selected),
        dense_video.Method("evs", "evs")])
    monkeypatch.setattr(dense_video, "SPARSE_FRAMES", 16)
    monkeypatch.setitem(dense_video.SCALES, "smoke", dict(
        train_per_family=2, select_per_family=1, test_per_family=1, adapt_steps=2, seeds=1))
    monkeypatch.setenv("FREJAX_ASSETS", str(tmp_path / "assets"))
    config = dense_video_config.get_config("smoke")
    config.data.update(num_frames=T, image_size=SIZE)
    config.model.vision.update(image_size=SIZE, width=3 * 14 * 14, heads=4)
    config.train.num_steps = 2
    config.eval.num_examples = 2            # the study scores every example regardless
    out = str(tmp_path / "report" / "dense")
    args = dict(scale="smoke", config=config, sources=_sources(tmp_path),
                workdir=str(tmp_path / "w"), encoder="pixels")
    # Learnable first: a ceiling below the bar stops the study after seed 0's ceiling.
    monkeypatch.setattr(dense_video_report, "LEARNED", 1.01)
    dense_video.run(out, "headline", **args)
    assert [r for r in os.listdir(out + "_runs")] == ["ceiling__seed0.json"]
    with open(os.path.join(out + "_runs", "ceiling__seed0.json")) as f:
        assert json.load(f)["num_examples"] == 5                  # 1 per family, all of them
    assert "no retention figure is reported" in open(out + ".md").read()
    # Some families only (a diagnosis): their own cache, and the groups shrink to them.
    part = str(tmp_path / "report" / "hard")
    dense_video.run(part, "ceiling", families=("fast_motion", "counting"), **args)
    with open(part + ".json") as f:
        meta = json.load(f)["meta"]
    assert meta["groups"] == {"brief": ["counting"], "fast_motion": ["fast_motion"]}
    with open(os.path.join(part + "_runs", "ceiling__seed0.json")) as f:
        assert set(json.load(f)["accuracy_by_family"]) == {"fast_motion", "counting"}
    # The bar met (for this slice: 2 steps learn nothing): the rest runs from that ceiling.
    monkeypatch.setattr(dense_video_report, "LEARNED", 0.0)
    files = dense_video.run(out, "headline", **args)
    assert out + ".md" in files and out + ".json" in files
    with open(out + ".json") as f:
        report = json.load(f)
    kinds = {(r["kind"], r["method"]) for r in report["rows"]}
    assert {("ceiling", "full"), ("adapted", "uniform_frames"), ("scratch", "fre_res:selected"),
            ("free", "evs"), ("adapted", "full")} <= kinds
    assert set(report["selection"]) == {"fre_res", "fre_res:paper"}
    assert report["meta"]["ratio"] == 2.0 and report["meta"]["skipped"]
    runs = sorted(os.listdir(out + "_runs"))
    assert any(r.startswith("select-adapted") for r in runs)
    mtimes = {r: os.path.getmtime(os.path.join(out + "_runs", r)) for r in runs}
    dense_video.run(out, "headline", **args)                  # resumes: nothing trains again
    assert {r: os.path.getmtime(os.path.join(out + "_runs", r)) for r in runs} == mtimes
    text = open(out + ".md").read()
    assert "Learnable first" in text and "fast.mp4" in text and "slow.mp4" in text


def test_time_to_first_token_compares_every_frame_streamed_with_32_sparse_frames():
    config = dense_video_config.get_config("smoke")
    config.data.update(num_frames=T, image_size=SIZE)
    config.model.vision.image_size = SIZE
    result = dense_ttft.measure(config, frozen_encoder.Encoder("pixels", SIZE), seconds=3,
                                fps=25, methods=["full", "evs"], repeats=1,
                                log=lambda *_: None)
    dense_ttft.add_ratios(result)
    assert result["chunks"] == 3 and result["frames"] == 75               # 75 frames, 32 each
    full, dense_row, sparse = (result["rows"][k] for k in ("dense/full", "dense/evs", "sparse32"))
    assert dense_row["frames_encoded"] == 75 and sparse["frames_encoded"] == 32
    assert full["visual_tokens"] == 3 * T * 4                             # every token
    assert dense_row["visual_tokens"] == 3 * (T * 4 // 2)                 # 3 chunks at 2x
    assert sparse["visual_tokens"] == 32 * 4 and sparse["ttft_vs_sparse32"] == 1.0
    assert dense_row["ttft_s"] == pytest.approx(
        dense_row["encoder_s"] + dense_row["compressor_s"] + dense_row["prefill_s"])
    assert dense_row["encoder_share"] == pytest.approx(dense_row["encoder_s"] / dense_row["ttft_s"])
    assert full["full_ttft_over_this"] == 1.0
    assert dense_row["full_ttft_over_this"] == pytest.approx(full["ttft_s"] / dense_row["ttft_s"])
    # Peak memory is measured: this process's, which holds at least the frames it encoded.
    assert dense_ttft.peak_rss_bytes() > 75 * SIZE * SIZE * 3


def test_the_motion_probe_reads_a_crossing_from_the_cells_that_light_first():
    """A square crossing a 2x2 grid (cells TL TR BL BR) lights the cells it leaves first:
    the timed decoder reads each of the four directions; the lagged features differ
    between opposite directions."""
    from frejax.studies import dense_motion_probe as probe  # noqa: PLC0415

    rng = np.random.default_rng(0)
    # answer: (cells it starts in, cells it ends in); left, right, up, down.
    crossings = {0: ((1, 3), (0, 2)), 1: ((0, 2), (1, 3)), 2: ((2, 3), (0, 1)),
                 3: ((0, 1), (2, 3))}
    feats = {}
    for answer, (start, end) in crossings.items():
        latents = 0.01 * rng.standard_normal((32, 4, 8)).astype(np.float32)
        latents[10:12, list(start)] += 3.0
        latents[12:14, list(end)] += 3.0
        assert probe.timed(latents, list(range(10, 14))) == answer
        feats[answer] = probe.lagged_features(latents)
    assert feats[0].shape == (2 * len(probe.LAGS),)
    assert not np.allclose(feats[0], feats[1]) and not np.allclose(feats[2], feats[3])


def test_the_probe_network_learns_a_crossing_it_is_not_told_the_time_of():
    """The network decoder, given only the tokens, learns the direction of a crossing at a
    random moment over noise (held out: select and test are other draws)."""
    from frejax.studies import dense_motion_probe as probe  # noqa: PLC0415

    rng = np.random.default_rng(0)
    crossings = {0: ((1, 3), (0, 2)), 1: ((0, 2), (1, 3)), 2: ((2, 3), (0, 1)),
                 3: ((0, 1), (2, 3))}

    def draw(n):
        y = rng.integers(0, 4, n)
        x = rng.standard_normal((n, 24, 4, 8)).astype(np.float16)
        for i, answer in enumerate(y):
            t = int(rng.integers(0, 20))
            start, end = crossings[int(answer)]
            x[i, t:t + 2, list(start)] += 3
            x[i, t + 2:t + 4, list(end)] += 3
        return x, y

    splits = {"train": draw(256), "select": draw(64), "test": draw(64)}
    result = probe.train_network(splits, classes=4, seed=0, epochs=8, batch=32, lr=3e-3)
    assert result["accuracy"]["test"] > 0.9 and 1 <= result["epoch"] <= 8


def test_the_candidates_are_distinct_models_and_place_rules_only_under_multimodal_rope(
        monkeypatch):
    """Where Fre-Res's residual tokens sit in time is chosen with the other settings when
    positions come from places; 1D RoPE ignores places, so the rules are no candidates.
    A candidate that is the same model as one before it is not run twice."""
    names = ("fre_res", "fre_res:segments16", "fre_res:segments32")   # builds are slow
    monkeypatch.setattr(dense_video, "CANDIDATES", {k: dense_video.CANDIDATES[k] for k in names})
    config = dense_video_config.get_config("smoke")
    assert tuple(config.model.llm.mrope_sections)            # the study's model: M-RoPE
    chosen = dense_video.candidates(config)
    # At the study's 128 frames and budget the default's segments are 16 frames long;
    # segment-mean anchors placed at the anchor sit at the segment's centre, the default.
    assert set(chosen) == {"fre_res", "fre_res:segments32", "fre_res:place_spread"}
    config.model.llm.mrope_sections = ()
    monkeypatch.setattr(dense_video, "fingerprint", lambda config, options: None)
    assert not set(dense_video.PLACES) & set(dense_video.candidates(config))
