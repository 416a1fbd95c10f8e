"""The natural-footage video-QA benchmark: plans with exact answers, rendering, held-out files."""

import json
import os

import numpy as np
import pytest

import video_files
from data_pipelines import annotations
from data_pipelines import natural_video_qa as nvq
from data_pipelines import video_decode

T, SIZE = 8, 32


def _footage(num_frames: int, seed: int) -> np.ndarray:
    """A moving scene: a bright bar sweeping right over a noisy background."""
    rng = np.random.default_rng(seed)
    frames = np.repeat(rng.integers(0, 120, (1, SIZE, SIZE, 3), dtype=np.uint8), num_frames, 0)
    for i in range(num_frames):
        frames[i, :, (i * 3) % SIZE] = 255
    return frames


@pytest.mark.parametrize("family", nvq.FAMILIES)
def test_every_plan_has_its_exact_answer(family):
    rng = np.random.default_rng(0)
    footage = _footage(80, 1)
    examples = nvq.plan([80, 40], family, 24, T, SIZE, rng)
    options = nvq.question(examples[0])[1]
    counts = np.bincount([e.answer for e in examples], minlength=len(options))
    assert counts.min() == counts.max()  # balanced answers
    for ex in examples:
        assert len(ex.frames) == T and all(0 <= f < [80, 40][ex.video] for f in ex.frames)
        steps = np.diff(ex.frames)
        clip = nvq.render(ex, footage)
        assert clip.shape == (T, SIZE, SIZE, 3)
        if family == "direction":
            assert (steps == (1 if ex.answer == 0 else -1)).all()
        elif family == "speed":
            assert (steps == nvq._STRIDES[ex.answer]).all()
        elif family == "freeze":
            frozen = np.flatnonzero(steps == 0)
            third = {0: "first", 1: "middle", 2: "last"}[ex.answer]
            centre = frozen.mean() / (T - 1)
            assert {"first": centre < 0.34, "middle": 0.25 < centre < 0.75,
                    "last": centre > 0.5}[third]
            assert ((steps == 0) | (steps == 1)).all()
        elif family == "order":
            half = T // 2
            jump = ex.frames[half] - ex.frames[half - 1]
            assert (jump > 0) == (ex.answer == 0) and abs(jump) >= half
        else:
            colour, row, col, side, cols, shown = ex.probe
            painted = [(clip[k, row:row + side, (cols[k] if cols else col):][:, :side]
                        == nvq._COLOURS[colour]).all() for k in range(T)]
            assert [k for k in range(T) if painted[k]] == list(shown)
            if family == "static_detail":
                assert colour == ex.answer and shown == tuple(range(T))
            elif family == "brief_event":
                assert len(shown) in (1, 2) and shown[0] // (T // 3) == ex.answer
            elif family == "counting":
                assert len(shown) == ex.answer + 1 and np.diff(shown).min(initial=2) >= 2
            elif family == "object_motion":
                assert (np.diff(cols) >= 0).all() == (ex.answer == 1)


def test_plan_refuses_videos_too_short_and_unknown_families():
    with pytest.raises(ValueError, match="at least 32 frames"):
        nvq.plan([20], "speed", 2, T, SIZE, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown family"):
        nvq.plan([80], "colour", 2, T, SIZE, np.random.default_rng(0))


def test_build_writes_a_held_out_video_folder(tmp_path):
    src = tmp_path / "footage"
    src.mkdir()
    for name, seed in (("a.mp4", 1), ("b.mp4", 2), ("c.mp4", 3)):
        video_files.write_frames(src / name, _footage(48, seed))
    out = tmp_path / "qa"
    manifest = nvq.build(sorted(str(p) for p in src.iterdir()), str(out), frames=T,
                         size=SIZE, train_per_family=4, eval_per_family=2, eval_videos=1)
    assert manifest["splits"]["train"]["videos"] == ["a.mp4", "b.mp4"]
    assert manifest["splits"]["eval"]["videos"] == ["c.mp4"]
    for split, per in (("train", 4), ("eval", 2)):
        index = annotations.load_annotations(str(out / f"{split}.jsonl"), str(out))
        assert index.num_bad == 0 and len(index.records) == per * len(nvq.FAMILIES)
        assert set(index.families) == set(nvq.FAMILIES)
        sources = {json.loads(l)["source"] for l in open(out / f"{split}.jsonl")}
        assert sources <= set(manifest["splits"][split]["videos"])
    # A written clip decodes to the rendered frames; a probe's colour survives the codec.
    line = next(json.loads(l) for l in open(out / "eval.jsonl")
                if json.loads(l)["family"] == "static_detail")
    frames, mask = video_decode.decode_video(
        open(out / line["video"], "rb").read(),
        video_decode.FrameSampling(num_frames=T, image_size=SIZE))
    assert mask.all()
    colour = "ABCD".index(line["answer"])
    # The square is the only region of that colour: find it and compare.
    target = nvq._COLOURS[colour].astype(int)
    close = (np.abs(frames.astype(int) - target).max(-1) < 40).mean(0)
    assert close.max() == 1.0  # some pixels hold the probe colour in every frame
