"""Natural-video QA protocol: the latent cache, the latents-in model, the report (a slice)."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import long_video
from configs import natural_qa as natural_qa_config
from data_pipelines import natural_video_qa as nvq
from data_pipelines import video_qa_synthetic
from frejax import config_lib
from frejax.studies import frozen_encoder
from frejax.studies import latent_cache
from data_pipelines import latent_source
from frejax.studies import natural_qa
from frejax.studies import natural_qa_report
from frejax.training import train, train_state

T, SIZE = 16, 56  # 56 px: 4 x 4 patches of 14 px


def _write_footage(folder, lengths=(70, 70, 70)) -> list[str]:
    """Short clips of a bright bar sweeping over noise (each its own speed and colour)."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for v, n in enumerate(lengths):
        rng = np.random.default_rng(v)
        frames = np.repeat(rng.integers(0, 120, (1, SIZE, SIZE, 3), dtype=np.uint8), n, 0)
        for i in range(n):
            frames[i, :, (i * (v + 1)) % SIZE, v % 3] = 255
        path = os.path.join(folder, f"clip{v}.mp4")
        nvq.write_video(path, frames)
        paths.append(path)
    return paths


class _CountingEncoder:
    """The raw-pixel encoder, counting the frames it encodes."""

    def __init__(self):
        self.inner = frozen_encoder.Encoder("pixels", SIZE)
        self.id, self.grid, self.frames = self.inner.id, self.inner.grid, 0

    def __call__(self, frames):
        self.frames += len(frames)
        return self.inner(frames)


def _example(record: dict, videos: list[str]) -> nvq.Example:
    probe = record["probe"]
    if probe:
        probe = tuple(probe[:4]) + (tuple(probe[4]) if probe[4] else None, tuple(probe[5]))
    return nvq.Example(record["family"], videos.index(record["source"]), tuple(record["frames"]),
                       "ABCD".index(record["answer"]), tuple(probe))


def test_cache_gathers_footage_latents_and_encodes_probe_frames(tmp_path):
    paths = _write_footage(str(tmp_path / "footage"))
    encoder = _CountingEncoder()
    spec = latent_cache.CacheSpec(frames=T, size=SIZE, pool=1, train_per_family=3,
                                  eval_per_family=2)
    folder = latent_cache.build(paths, str(tmp_path / "cache"), encoder, spec, log=lambda *_: 0)
    decoded = [nvq.decode_footage(p, SIZE, 4000) for p in paths]
    names = [os.path.basename(p) for p in paths]
    probe_frames = 0
    for split, videos in (("train", names[:2]), ("eval", names[2:])):
        data = latent_source.load(folder, split)
        assert len(data.examples) == len(nvq.FAMILIES) * (3 if split == "train" else 2)
        assert {r["source"] for r in data.examples} <= set(videos)  # the held-out clip
        for latents, record in zip(data.latents, data.examples):
            ex = _example(record, names)
            clip = nvq.render(ex, decoded[ex.video])  # what a per-example encoder would see
            want = encoder.inner(clip).astype(np.float16)
            np.testing.assert_array_equal(latents, want, err_msg=record["family"])
            probe_frames += len(ex.probe[5]) if ex.probe else 0
    # Footage frames once, then only the frames a probe changes.
    assert encoder.frames == sum(len(d) for d in decoded) + probe_frames
    manifest = latent_source.manifest(folder)
    assert manifest["grid"] == [4, 4] and manifest["width"] == 14 * 14 * 3
    # A finished cache is reused as it is; other settings get their own folder.
    assert latent_cache.build(paths, str(tmp_path / "cache"), encoder, spec) == folder
    assert encoder.frames == sum(len(d) for d in decoded) + probe_frames
    other = latent_cache.CacheSpec(frames=T, size=SIZE, pool=1, train_per_family=3,
                                   eval_per_family=2, seed=1)
    assert latent_cache.cache_key(other, paths, encoder.id) != os.path.basename(folder)


def test_redrawn_temporal_rows_keep_their_answer_on_new_footage(tmp_path):
    paths = _write_footage(str(tmp_path / "footage"))
    spec = latent_cache.CacheSpec(frames=T, size=SIZE, pool=1, train_per_family=4,
                                  eval_per_family=2)
    folder = latent_cache.build(paths, str(tmp_path / "cache"), _CountingEncoder(), spec,
                                log=lambda *_: 0)
    source = latent_source.LatentCacheSource(folder, "train")
    redraw = latent_source.Redraw(folder)
    clips, families = redraw.footage, source.families
    rng = np.random.default_rng(0)
    moved = 0
    for r in range(len(source)):
        record = source[r]
        family, answer = families[record["family"]], record["option"]
        if family not in ("direction", "speed", "static_detail"):
            continue
        latents = redraw.random_map(record, rng)["latents"]
        if family == "static_detail":  # a probe family: the cached row as it is
            np.testing.assert_array_equal(latents, record["latents"])
            continue
        # Find the drawn window in the clips' own frame latents; its steps give the answer.
        (v, start), = {(v, int(i)) for v, c in enumerate(clips)
                       for i in np.flatnonzero((c == latents[0]).all(axis=(1, 2)))}
        step = (1, -1)[answer] if family == "direction" else nvq._STRIDES[answer]
        want = clips[v][start + step * np.arange(T)]
        np.testing.assert_array_equal(latents, want, err_msg=f"{family} answer {answer}")
        moved += not np.array_equal(latents, record["latents"])
    assert moved > 0  # new footage windows, not the cached ones
    # Standardised by the training split's statistics: about zero mean, unit scale.
    latents = np.stack([source[r]["latents"] for r in range(len(source))]).astype(np.float64)
    assert abs(latents.mean()) < 0.05 and abs(latents.std() - 1) < 0.05


def test_pooling_halves_each_side_by_averaging():
    x = np.random.default_rng(0).normal(size=(3, 8 * 8, 5)).astype(np.float32)
    pooled = latent_cache.pool_latents(x, (8, 8), 2)
    want = x.reshape(3, 4, 2, 4, 2, 5).mean(axis=(2, 4)).reshape(3, 16, 5)
    np.testing.assert_allclose(pooled, want, rtol=1e-6, atol=1e-6)


def test_latents_in_model_equals_the_pixel_model_on_its_encoder_latents():
    config = long_video.get_config("smoke")
    tokenizer = video_qa_synthetic.tokenizer()
    pixels = train_state.create_model(config, tokenizer, seed=0)
    latent_config = config.copy_and_resolve_references()
    latent_config.model.vision.update(input="latents", latent_grid=pixels.encoder.grid)
    latents_model = train_state.create_model(latent_config, tokenizer, seed=0)
    params = nnx.state(latents_model, nnx.Param)
    assert "encoder" not in params  # no encoder weights to hold, train or checkpoint
    # The same projector, compressor and LLM weights as the pixel model.
    shared = {k: v for k, v in nnx.to_pure_dict(nnx.state(pixels, nnx.Param)).items()
              if k != "encoder"}
    nnx.replace_by_pure_dict(params, shared)
    nnx.update(latents_model, params)
    rng = np.random.default_rng(0)
    b, t = 2, config.data.num_frames
    frames = jnp.asarray(rng.integers(0, 255, (b, t, 32, 32, 3)), jnp.uint8)
    tokens = jnp.asarray([[1, tokenizer.video_id, 5, 6, 0], [1, tokenizer.video_id, 7, 0, 0]],
                         jnp.int32)
    batch = dict(frames=frames, frame_mask=jnp.ones((b, t), bool), tokens=tokens,
                 text_mask=tokens > 0, prompt_len=jnp.array([3, 3], jnp.int32))
    want = pixels(batch)
    latent_batch = dict(batch, latents=pixels.encoder(frames))
    del latent_batch["frames"]
    np.testing.assert_allclose(latents_model(latent_batch), want, rtol=1e-5, atol=1e-5)


def test_configs_validate_and_bad_latent_settings_name_the_key():
    from data_pipelines import datasets  # noqa: PLC0415
    from frejax import config_lib  # noqa: PLC0415

    for arg in ("cache=/c", "scale=accelerator,cache=/c", "smoke,cache=/c"):
        config_lib.validate(natural_qa_config.get_config(arg))
    with pytest.raises(ValueError, match="scale='tpu'"):
        natural_qa_config.get_config("scale=tpu")
    with pytest.raises(ValueError, match="config.data.root must be set"):
        config_lib.validate(natural_qa_config.get_config())
    bad = natural_qa_config.get_config("cache=/c")
    bad.model.vision.latent_grid = (0, 4)
    with pytest.raises(ValueError, match="model.vision.latent_grid"):
        config_lib.validate(bad)
    frames = long_video.get_config("smoke")
    frames.model.vision.update(input="latents", latent_grid=(4, 4))
    with pytest.raises(ValueError, match="model.vision.input.*latent_cache"):
        config_lib.validate(frames)
    with pytest.raises(FileNotFoundError, match="config.data.root.*--part=cache"):
        datasets.make_source(natural_qa_config.get_config("cache=/nonexistent"), "train", 8)


def test_interval_is_the_student_t_interval_over_seeds():
    mean, half = natural_qa_report.interval([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6)
    assert half == pytest.approx(4.303 * 0.1 / np.sqrt(3))  # t(0.975, 2 dof) * sd / sqrt(n)
    assert natural_qa_report.interval([0.4]) == (0.4, 0.0)


def _slice_config():
    c = natural_qa_config.get_config("smoke")
    c.data.image_size = SIZE
    c.model.vision.update(image_size=SIZE, width=14 * 14 * 3, heads=6, latent_grid=(4, 4))
    return c


def _slice_cache(tmp_path) -> str:
    _write_footage(str(tmp_path / "footage"))
    config = _slice_config()
    return natural_qa.build_cache(config, natural_qa.SCALES["smoke"], str(tmp_path / "footage"),
                                  encoder="pixels")


def test_the_main_loop_trains_on_cached_latents_and_starts_from_another_run(tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv("FREJAX_ASSETS", str(tmp_path / "assets"))
    config = _slice_config()
    config.data.root = _slice_cache(tmp_path)
    config.train.update(num_steps=4, checkpoint_every=4)
    first = train.train_and_evaluate(config, str(tmp_path / "ceiling"))
    assert first["num_examples"] == len(nvq.FAMILIES) * 2 and first["step"] == 4
    assert set(first["accuracy_by_family"]) == set(nvq.FAMILIES)
    # A run of 0 steps that takes the projector and LLM of the first evaluates the same
    # weights: the same answers.
    again = config.copy_and_resolve_references()
    again.train.num_steps = 0
    again.init.update(checkpoint=str(tmp_path / "ceiling"), groups="projector,llm")
    second = train.train_and_evaluate(again, str(tmp_path / "evaluated"))
    assert second["accuracy_by_family"] == first["accuracy_by_family"]
    # A group the checkpoint lacks (the ceiling's compressor has no params) is refused,
    # naming the key.
    wrong = again.copy_and_resolve_references()
    wrong.compressor = config_lib.compressor_config("fre_res", ratio=10.0)
    wrong.init.groups = "compressor,projector"
    with pytest.raises(ValueError, match="config.init.groups"):
        train.train_and_evaluate(wrong, str(tmp_path / "wrong"))


def test_report_slice_runs_the_protocol_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("FREJAX_ASSETS", str(tmp_path / "assets"))
    # Fre-Res's three forms and two baselines: the headline's logic (rank the baselines
    # training-free, keep the strongest three and the temporal DCT) in few runs.
    subset = ("fre_res", "fre_res_frames", "temporal_dct_only", "temporal_dct",
              "uniform_frames")
    monkeypatch.setattr(natural_qa, "all_methods", lambda: [natural_qa.Method(n, n)
                                                            for n in subset])
    _write_footage(str(tmp_path / "footage"))
    out = str(tmp_path / "report" / "natural_qa")
    kw = dict(scale="smoke", config=_slice_config(), footage=str(tmp_path / "footage"),
              workdir=str(tmp_path / "work"), encoder="pixels")
    files = natural_qa.run(out, **kw)
    assert {os.path.basename(f) for f in files} >= {"natural_qa.md", "natural_qa.json"}
    with open(out + ".json") as f:
        report = json.load(f)
    rows = {(r["kind"], r["method"], r["ratio"]): r for r in report["rows"]}
    ceiling = rows[("ceiling", "full", 1.0)]
    assert ceiling["seeds"] == 2 and ceiling["visual_tokens"] == T * 16
    # The headline at 10x, adapted: the full-token control, Fre-Res, its training-free form
    # and residual track, the three baselines ranked first training-free on seed 0, and
    # the plain temporal DCT.
    adapted = [k for k in rows if k[0] == "adapted"]
    assert all(k[2] == 10.0 for k in adapted)
    seed0 = [json.load(open(os.path.join(out + "_runs", name)))
             for name in os.listdir(out + "_runs") if name.startswith("free__")]
    ranked = sorted(((r["accuracy"], r["run"].split("/")[1].split("@")[0]) for r in seed0
                     if r["run"].endswith("/seed0") and "accuracy" in r
                     and natural_qa_report.compression_family(r["run"].split("/")[1].split("@")[0])
                     == "baseline"), key=lambda x: (-x[0], x[1]))
    want = {"full", "fre_res", "fre_res_frames", "temporal_dct_only", "temporal_dct"}
    assert {k[1] for k in adapted} == want | {m for _, m in ranked[:3]}
    assert all(rows[k]["seeds"] == 2 for k in adapted)
    assert "free/fre_res@10x" in report["unavailable"]  # learned absorber: adapted only
    runs = sorted(os.listdir(out + "_runs"))
    records = [json.load(open(os.path.join(out + "_runs", r))) for r in runs]
    ceilings = {r["run"].rsplit("/", 1)[1]: r["accuracy"] for r in records
                if r["run"].startswith("ceiling/")}
    fre = [r for r in records if r["run"].startswith("adapted/fre_res@")]
    assert len(fre) == 2
    for r in fre:
        assert r["visual_tokens"] == 25 and r["num_examples"] == 16 and r["steps"] == 2
    # Retained: each seed's accuracy over the same seed's ceiling, then the mean.
    ratios = [r["accuracy"] / ceilings[r["run"].rsplit("/", 1)[1]] for r in fre
              if ceilings[r["run"].rsplit("/", 1)[1]] > 0]
    row = rows[("adapted", "fre_res", 10.0)]
    if ratios:
        assert row["retained"][0] == pytest.approx(np.mean(ratios))
    else:
        assert row["retained"] is None
    markdown = open(out + ".md").read()
    assert "python -m frejax.studies.natural_qa" in markdown and "| ceiling | full | 1x |" in markdown

    # A rerun trains nothing: every run is read back, the report is the same.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(train, "train_and_evaluate", refuse)
    natural_qa.run(out, **kw)
    with open(out + ".json") as f:
        again = json.load(f)
    assert again["rows"] == report["rows"]
    assert sorted(os.listdir(out + "_runs")) == runs
