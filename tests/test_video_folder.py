"""Real videos through Grain: PyAV decode and sampling, annotation formats, the
video-folder source, bad input counted end to end, and a short training run
selected with the documented command-line flags."""

import json
import logging
import os

import numpy as np
import pytest

import video_files
from data_pipelines import annotations as annotations_lib
from data_pipelines import video_decode
from data_pipelines import video_folder
from data_pipelines import input_pipeline
from data_pipelines import tokenizer as tokenizer_lib

S = 16  # model resolution in these tests


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = video_files.make_folder(str(tmp_path_factory.mktemp("videos")))
    bad = video_files.write_bad_files(os.path.join(root, "clips"))
    return root, bad


def _read(root, name):
    with open(os.path.join(root, "clips", name), "rb") as f:
        return f.read()


def _nearest_frame(frame: np.ndarray, num_available: int) -> int:
    """Which source frame a decoded (flat-colour) frame shows."""
    colour = frame.reshape(-1, 3).mean(0)
    dist = [np.abs(colour - video_files.frame_colour(i)).sum() for i in range(num_available)]
    return int(np.argmin(dist))


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("clip", video_files.CLIPS, ids=[c[0] for c in video_files.CLIPS])
def test_every_container_and_codec_decodes_to_the_model_resolution(folder, clip):
    root, _ = folder
    name, *_, width, height, n = clip
    data = _read(root, name)
    frames, mask = video_decode.decode_video(data, video_decode.FrameSampling(4, S))
    assert frames.shape == (4, S, S, 3) and frames.dtype == np.uint8
    assert mask.tolist() == [i < min(n, 4) for i in range(4)]  # short clips padded, kept
    assert not frames[~mask].any()
    expected = video_decode.sample_indices(n, 4, "uniform")
    assert [_nearest_frame(f, n) for f in frames[mask]] == expected.tolist()

    padded, _ = video_decode.decode_video(data, video_decode.FrameSampling(4, S, resize="pad"))
    long_side_rows = width >= height  # landscape: the padding is above and below
    short = round(min(width, height) * S / max(width, height))
    lo = (S - short) // 2
    profile = padded[0].any(-1).any(1 if long_side_rows else 0)
    assert profile.tolist() == [lo <= i < lo + short for i in range(S)]


def test_fewer_decodable_frames_than_packets_are_sampled_again_not_padded(folder, monkeypatch):
    root, _ = folder
    data = _read(root, "mpeg4.mkv")  # 20 decodable frames
    monkeypatch.setattr(video_decode, "_count_frames", lambda _: 40)  # the demuxer says 40
    frames, mask = video_decode.decode_video(data, video_decode.FrameSampling(4, S))
    assert mask.all()
    assert [_nearest_frame(f, 20) for f in frames] == [2, 7, 12, 17]  # uniform over 20


def test_sampling_modes_pick_the_documented_frames(folder):
    root, _ = folder
    data = _read(root, "mpeg4.mkv")  # 20 frames at 8 fps

    def picked(seed=None, **kw):
        frames, mask = video_decode.decode_video(data, video_decode.FrameSampling(4, S, **kw), seed)
        assert mask.all()
        return [_nearest_frame(f, 20) for f in frames]

    assert picked(mode="uniform") == [2, 7, 12, 17]  # centres of 4 bins of 5
    assert picked(mode="dense") == [8, 9, 10, 11]    # centred window
    assert picked(mode="fps", fps=4.0) == [0, 2, 4, 6]
    windows = {tuple(video_decode.sample_indices(20, 4, "dense", seed)) for seed in range(8)}
    assert len(windows) > 1 and all(w[-1] - w[0] == 3 for w in windows)
    first, last = video_decode.sample_indices(20, 4, "dense", 5)[[0, -1]]
    assert picked(seed=5, mode="dense") == list(range(first, last + 1))  # seeded: reproducible
    assert video_decode.sample_indices(3, 8, "uniform").tolist() == [0, 1, 2]


@pytest.mark.parametrize("kind", ["empty_file", "not_a_video", "corrupt_video", "no_frames"])
def test_broken_files_raise_their_kind(folder, kind):
    root, bad = folder
    with pytest.raises(video_decode.VideoDecodeError) as e:
        video_decode.decode_video(_read(root, bad[kind]), video_decode.FrameSampling(4, S))
    assert e.value.kind == kind


# ---------------------------------------------------------------- annotations


def test_llava_json_and_jsonl_with_multi_turn_conversations(folder, tmp_path):
    root, _ = folder
    entry = {"id": "v1", "video": "clips/h264.mp4", "conversations": [
        {"from": "human", "value": "<video>\nWhat is shown?"},
        {"from": "gpt", "value": "A flat colour."},
        {"from": "human", "value": "And then?"},
        {"from": "gpt", "value": "Another colour."}]}
    as_json = tmp_path / "llava.json"
    as_json.write_text(json.dumps([entry]))
    as_jsonl = video_files.write_jsonl(str(tmp_path / "llava.jsonl"), [entry])
    for path in (str(as_json), as_jsonl):
        index = annotations_lib.load_annotations(path, root)
        assert index.bad == {} and len(index.records) == 2
        first, second = index.records
        assert (first.question, first.answer, first.history) == (
            "What is shown?", "A flat colour.", ())
        assert second.history == (("What is shown?", "A flat colour."),)
        assert second.question == "And then?" and first.family == "all"
    prompt = tokenizer_lib.format_prompt(second.question, second.history)
    assert prompt.count("<video>") == 1 and prompt.index("A flat colour.") < prompt.index("And then?")


@pytest.mark.parametrize("options, answer, letter", [
    (["red", "green", "blue"], "B", "B"),
    (["red", "green", "blue"], "(c)", "C"),
    (["red", "green", "blue"], "a.", "A"),
    (["red", "green", "blue"], "Green", "B"),
    (["A. red", "B. green", "C. blue"], "C. blue", "C"),
    ({"A": "red", "B": "green"}, "green", "B"),
])
def test_multiple_choice_renders_options_and_normalises_to_the_letter(options, answer, letter):
    question, got = annotations_lib.render_multiple_choice("Which colour?", options, answer)
    assert got == letter
    assert question.splitlines()[0] == "Which colour?"
    assert question.splitlines()[1:3] == ["A. red", "B. green"]


def test_every_bad_annotation_is_skipped_counted_and_named(folder, tmp_path, caplog):
    root, _ = folder
    (tmp_path / "outside.mp4").write_bytes(_read(root, "h264.mp4"))
    good = dict(video="clips/h264.mp4", question="q", answer="a", family="f")
    path = video_files.write_jsonl(str(tmp_path / "ann.jsonl"), [
        good,
        "{this is not json",                                                     # line 2
        dict(video="clips/h264.mp4", answer="a"),                                # line 3
        dict(video="clips/h264.mp4", question="q", options=["x", "y"], answer="D"),  # 4
        dict(video="clips/missing.mp4", question="q", answer="a"),               # line 5
        dict(video="../" + os.path.basename(str(tmp_path)) + "/outside.mp4",
             question="q", answer="a"),                                          # line 6
        dict(video=str(tmp_path / "outside.mp4"), question="q", answer="a"),     # line 7
        dict(video="clips/h264.mp4", question="q", options=["x", "y"], answer="z"),  # 8
    ])
    with caplog.at_level(logging.WARNING):
        index = annotations_lib.load_annotations(path, os.path.join(root))
    assert len(index.records) == 1 and index.num_entries == 8
    assert index.bad == dict(malformed_json=1, missing_field=1, unknown_option=2,
                             missing_video=1, path_escapes_root=2)
    for line, kind in [(2, "malformed_json"), (3, "missing_field"), (4, "unknown_option"),
                       (5, "missing_video"), (6, "path_escapes_root"),
                       (7, "path_escapes_root"), (8, "unknown_option")]:
        assert any(f"{path}:{line}: {kind}" in m for m in caplog.messages), (line, kind)


# ---------------------------------------------------------------- the source


def _source(root, path, split="train", families=("colour", "motion"), **kw):
    return video_folder.VideoFolderSource(
        root, path, sampling=video_decode.FrameSampling(4, S), families=families,
        split=split, **kw)


def test_folder_source_examples_and_bad_videos_flagged_at_read_time(folder, tmp_path, caplog):
    root, bad = folder
    entries = video_files.qa_entries(6) + [
        dict(video=f"clips/{name}", question="q", answer="a", family="colour")
        for name in bad.values()]
    path = video_files.write_jsonl(str(tmp_path / "ann.jsonl"), entries)
    source = _source(root, path)
    assert len(source) == 10
    e = source[2]
    assert e["question"] == "which clip is number 2\nA. first one\nB. second one\nC. third one"
    assert e["answer"] == "A" and e["family"] == 0 and e["input_error"] == 0
    assert e["frames"].shape == (4, S, S, 3) and e["frame_mask"].sum() == 1  # 1-frame clip
    with caplog.at_level(logging.WARNING):
        errors = {kind: source[6 + i]["input_error"] for i, kind in enumerate(bad)}
    for i, kind in enumerate(bad):
        assert errors[kind] == video_folder.input_error_code(kind)
        assert input_pipeline.INPUT_ERRORS[errors[kind]] == kind
        assert any(bad[kind] in m and f"{path}:{7 + i})" in m for m in caplog.messages), kind
    # Deterministic random access: the same index gives the same example.
    np.testing.assert_array_equal(source[5]["frames"], source[5]["frames"])


def _tok(source):
    texts = [t for r in source.records for t in (r.question, r.answer)]
    return tokenizer_lib.word_tokenizer_for(texts)


def _pipeline(source, **kw):
    args = dict(tokenizer=_tok(source), global_batch_size=4, max_text_len=40, max_answer_len=4,
                split=source.split, seed=0)
    args.update(kw)
    return input_pipeline.make_dataset(source, **args)


def test_bad_videos_keep_their_slot_train_nothing_and_are_counted(folder, tmp_path):
    root, bad = folder
    entries = video_files.qa_entries(7) + [
        dict(video=f"clips/{bad['corrupt_video']}", question="q", answer="a", family="motion")]
    source = _source(root, video_files.write_jsonl(str(tmp_path / "a.jsonl"), entries),
                     split="eval")
    batches = list(_pipeline(source, shuffle=False, num_epochs=1, max_bad_fraction=0.2))
    flat = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    assert flat["example_valid"].tolist() == [True] * 7 + [False]
    assert flat["input_error"].tolist() == [0] * 7 + [input_pipeline.INPUT_ERRORS.index(
        "corrupt_video")]
    assert flat["loss_mask"][7].sum() == 0 and flat["loss_mask"][:7].sum(1).min() > 0
    # Too many: the run stops with a summary naming the kind and the setting.
    with pytest.raises(input_pipeline.BadInputError, match="corrupt_video.*data.max_bad_fraction"):
        list(_pipeline(source, shuffle=False, num_epochs=1, max_bad_fraction=0.1))


def test_text_over_the_limits_is_a_counted_bad_input(folder, tmp_path):
    root, _ = folder
    entries = video_files.qa_entries(3) + [
        dict(video="clips/h264.mp4", question="a question " * 30, answer="a", family="motion")]
    source = _source(root, video_files.write_jsonl(str(tmp_path / "a.jsonl"), entries),
                     split="eval")
    (batch,) = list(_pipeline(source, shuffle=False, num_epochs=1, max_bad_fraction=0.5,
                              skip_bad_text=True))
    assert batch["input_error"].tolist() == [0, 0, 0, input_pipeline.INPUT_ERRORS.index(
        "text_too_long")]


def test_folder_source_resumes_and_partitions_over_hosts(folder, tmp_path):
    root, _ = folder
    source = _source(root, video_files.write_jsonl(
        str(tmp_path / "a.jsonl"), video_files.qa_entries(12)))
    it = iter(_pipeline(source))
    next(it)
    state = it.get_state()
    want = next(it)
    resumed = iter(_pipeline(source))
    resumed.set_state(state)
    got = next(resumed)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    seen = [np.concatenate([b["index"] for b in _pipeline(
        source, process_index=p, process_count=2, num_epochs=1)]) for p in range(2)]
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) == len(seen[1]) == 6


def test_bad_input_flags_cross_worker_processes(folder, tmp_path):
    from absl import flags  # Grain 0.2.18's mp_prefetch reads absl flags

    flags.FLAGS.mark_as_parsed()
    root, bad = folder
    entries = video_files.qa_entries(6) + [
        dict(video=f"clips/{bad['empty_file']}", question="q", answer="a"),
        dict(video=f"clips/{bad['not_a_video']}", question="q", answer="a")]
    source = _source(root, video_files.write_jsonl(str(tmp_path / "a.jsonl"), entries),
                     families=("all", "colour", "motion"))
    ds = _pipeline(source, num_epochs=1, worker_count=1, max_bad_fraction=0.25)
    batches = list(ds)
    errors = np.concatenate([b["input_error"] for b in batches])
    assert sorted(input_pipeline.INPUT_ERRORS[e] for e in errors if e) == [
        "empty_file", "not_a_video"]


# ---------------------------------------------------------------- config to training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(*argv):
    """The config as ``frejax.main`` parses it from these command-line flags."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["main", f"--config={REPO}/configs/short_video.py:smoke", *argv]
    values = flags.FlagValues()
    config = config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                             lock_config=True, sys_argv=argv)
    values(argv)
    return config.value


def _folder_flags(root, train, eval_):
    return ("--config.data.name=video_folder", f"--config.data.root={root}",
            f"--config.data.train_annotations={train}",
            f"--config.data.eval_annotations={eval_}")


def test_documented_flags_train_and_evaluate_on_a_video_folder(folder, tmp_path):
    import jax

    from frejax import config_lib
    from data_pipelines import datasets as data_lib
    from frejax.training import evaluate
    from frejax import sharding
    from frejax.training import train
    from frejax.training import train_state

    root, bad = folder
    # Every train batch of 8 holds exactly one broken video: each step counts one.
    train_file = video_files.write_jsonl(str(tmp_path / "train.jsonl"), video_files.qa_entries(7) + [
        dict(video=f"clips/{bad['no_frames']}", question="q", answer="a", family="motion")])
    eval_file = video_files.write_jsonl(str(tmp_path / "eval.jsonl"), video_files.qa_entries(5) + [
        dict(video=f"clips/{bad['corrupt_video']}", question="q", answer="a", family="colour")])
    config = _parse(*_folder_flags(root, train_file, eval_file),
                    "--config.data.max_text_len=40", "--config.data.max_answer_len=4",
                    "--config.eval.max_new_tokens=4", "--config.data.max_bad_fraction=0.2",
                    "--config.compressor.name=uniform_frames")  # the cheapest to compile
    config_lib.validate(config)
    assert data_lib.family_names(config) == ("colour", "motion")
    tok = data_lib.make_tokenizer(config)
    assert tok.encode("which clip is number 2").count(tok.unk_id) == 0  # the data's own words

    # The trainer's pieces on one device (the 8-device path is tested in test_train.py).
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    with jax.set_mesh(mesh), sharding.axis_rules(config.sharding.rules):
        setup = train_state.make_setup(config, mesh, tok)
        state = train_state.init_state(config, setup, tok)
        step = train.make_train_step(setup, config, sharding.batch_sharding(mesh))
        it = data_lib.make_train_iterator(config, tok, mesh)
        for _ in range(2):
            state, metrics = step(state, data_lib.next_global_batch(it, sharding.batch_sharding(mesh)))
            assert float(metrics["bad_inputs"]) == 1.0 and np.isfinite(float(metrics["loss"]))
        results = evaluate.Evaluator(config, setup.graphdef, tok, mesh).evaluate(state["params"])
    assert results["num_examples"] == 5  # the corrupt eval video does not count
    assert results["num_examples_by_family"] == {"colour": 3, "motion": 2}
    assert set(results["accuracy_by_family"]) == {"colour", "motion"}


def test_video_folder_config_errors_name_the_key(folder, tmp_path):
    from frejax import config_lib

    with pytest.raises(ValueError, match="config.data.root must be set"):
        config_lib.validate(_parse("--config.data.name=video_folder"))
    with pytest.raises(ValueError, match="config.data.name must be one of"):
        config_lib.validate(_parse("--config.data.name=folder"))
    with pytest.raises(ValueError, match="config.data.tokenizer_path"):
        config_lib.validate(_parse("--config.data.tokenizer=sentencepiece"))
    with pytest.raises(ValueError, match="config.data.prompt_template"):
        config_lib.validate(_parse("--config.data.prompt_template=question: {question}"))


def test_mostly_broken_annotations_stop_before_training(folder, tmp_path):
    from data_pipelines import datasets as data_lib

    root, _ = folder
    train_file = video_files.write_jsonl(str(tmp_path / "t.jsonl"), video_files.qa_entries(3) + [
        "{broken", dict(video="clips/none.mp4", question="q", answer="a")])
    config = _parse(*_folder_flags(root, train_file, train_file))
    with pytest.raises(input_pipeline.BadInputError, match=r"2 of 5 annotation records"):
        data_lib.make_source(config, "train", 0)
