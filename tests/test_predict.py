"""Video Q&A from a trained checkpoint: the CLI, batch predictions and the token cache."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import short_video
from data_pipelines import video_decode
from data_pipelines import video_qa_synthetic
from frejax.training import checkpointing
from data_pipelines import datasets as data_lib
from frejax.inference import predict
from frejax import sharding
from frejax.inference import token_cache
from data_pipelines import tokenizer as tokenizer_lib
from frejax.training import train_state
from video_files import write_frames

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/short_video.py:smoke"


def _save_checkpoint(workdir, config, step=1):
    """A checkpoint exactly as the main job writes it (state, data iterator, config).

    The params are the initialised ones: the plumbing under test does not need an
    accurate model, and compiling a train step would double this file's run time
    (tests/test_train.py trains through ``frejax.main``).
    """
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    with jax.set_mesh(mesh), sharding.axis_rules(config.sharding.rules):
        tok = data_lib.make_tokenizer(config)
        setup = train_state.make_setup(config, mesh, tok)
        state = train_state.init_state(config, setup, tok)
        state["step"] = jnp.asarray(step, jnp.int32)
        it = data_lib.make_train_iterator(config, tok, mesh)
        ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
        ckpt.save(step, state, it, config, tok, force=True)
        ckpt.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint in a workdir, and two benchmark clips as mp4 files."""
    root = tmp_path_factory.mktemp("predict")
    workdir = root / "run"
    config = short_video.get_config("smoke")
    _save_checkpoint(str(workdir), config, step=2)
    source = video_qa_synthetic.VideoQASource(
        num_frames=config.data.num_frames, image_size=config.data.image_size, num_examples=2,
        split="eval", seed=7)
    videos = []
    for i in range(2):
        example = source[i]
        write_frames(root / f"clip{i}.mp4", example["frames"])
        videos.append((f"clip{i}.mp4", example["question"], example["answer"]))
    return root, workdir, videos


@pytest.fixture(scope="module")
def qa(trained):
    _, workdir, _ = trained
    config = short_video.get_config("smoke")
    config.eval.max_new_tokens = 4  # past eos too: decoding continues through the cache
    qa, step = predict.load_video_qa(config, str(workdir / "checkpoints"))
    assert step == 2 and qa.max_new_tokens == 4
    return qa


def test_cli_answers_a_question_about_a_video_file(trained):
    root, workdir, videos = trained
    clip, question, _ = videos[0]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    out = subprocess.run(
        [sys.executable, "-m", "frejax.inference.predict", f"--config={CONFIG}",
         f"--checkpoint={workdir}", f"--video={root / clip}", f"--question={question}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("answer:")
    # smoke: 8 frames x 16 patches = 128 full tokens, Fre-Res at 8x fewer.
    assert "used of 16 (full 128, 8.0x fewer)" in lines[1]
    for stage in predict.STAGES:
        assert stage in lines[2], (stage, lines[2])


def test_batch_mode_writes_jsonl_and_reuses_each_videos_tokens(trained, qa):
    root, _, videos = trained
    qa.cache = token_cache.VideoTokenCache()
    questions = []
    for clip, question, answer in videos:
        questions += [dict(id=f"{clip}-{k}", video=clip, question=q, answer=answer)
                      for k, q in enumerate([question, "what color was the flash", question])]
    annotations = root / "qa.jsonl"
    annotations.write_text("".join(json.dumps(q) + "\n" for q in questions))
    output = root / "predictions.jsonl"
    summary = predict.predict_file(qa, str(annotations), str(output), str(root))
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in rows] == [q["id"] for q in questions]
    assert all(set(r) == {"id", "video", "question", "prediction", "answer"} for r in rows)
    assert summary["videos"] == 2 and summary["cache_hits"] == 4
    # Timed after the first video (its questions compiled every stage): both kinds seen.
    assert summary["first_question_s"] > 0 and summary["cached_question_s"] > 0
    assert qa.cache.hits == 4 and qa.cache.misses == 2
    # The same question about the same video gives the same answer, cached or not.
    assert rows[0]["prediction"] == rows[2]["prediction"]
    assert rows[3]["prediction"] == rows[5]["prediction"]


def test_cached_answers_equal_generate_on_the_decoded_clip(trained, qa):
    """Prefix KV reuse and split prefill/decode reproduce ``VideoMLLM.generate`` exactly."""
    root, _, videos = trained
    config = qa.config
    qa.cache = token_cache.VideoTokenCache()
    clip, question, _ = videos[1]
    path = str(root / clip)
    with open(path, "rb") as f:
        frames, frame_mask = video_decode.decode_video(f.read(), qa.sampling)
    tok = qa.tokenizer
    generate = jax.jit(lambda params, batch: nnx.merge(qa.engine.graphdef, params).generate(
        batch, 4, prefix_len=1, eos_id=tok.eos_id))
    for q in (question, "which way did the object move"):
        prompt = [tok.bos_id] + tok.encode(tokenizer_lib.format_prompt(q))
        tokens = np.zeros((1, qa.question_len), np.int32)
        tokens[0, :len(prompt)] = prompt
        batch = dict(frames=jnp.asarray(frames[None]), frame_mask=jnp.asarray(frame_mask[None]),
                     tokens=jnp.asarray(tokens), text_mask=jnp.asarray(tokens != 0),
                     prompt_len=jnp.asarray([len(prompt)], jnp.int32))
        with jax.set_mesh(qa.mesh):
            want = np.asarray(generate(qa.params, batch))[0].tolist()
        first = qa.ask(path, q)
        again = qa.ask(path, q)
        assert first.tokens == want and again.tokens == want
        assert again.cached and "encode" not in again.timings and "decode_video" not in again.timings
    # Without the prefix cache (compressed tokens only) the answers are the same too.
    with_prefix = qa.ask(path, question).tokens
    qa.cache, qa.cache_prefix = token_cache.VideoTokenCache(), False
    try:
        assert qa.ask(path, question).tokens == qa.ask(path, question).tokens == with_prefix
        assert qa.cache.hits == 1 and qa.cache._entries[next(iter(qa.cache._entries))].prefix is None
    finally:
        qa.cache_prefix = True


def test_bad_inputs_name_the_file(trained, tmp_path):
    root, workdir, _ = trained
    with pytest.raises(FileNotFoundError, match="no such folder"):
        checkpointing.resolve_checkpoint(str(tmp_path / "nope"))
    bad = tmp_path / "qa.jsonl"
    bad.write_text('{"video": "clip0.mp4", "question": "q"}\n{"video": 3}\n')
    rows = list(predict.read_questions(str(bad), str(root)))
    assert "error" not in rows[0]
    assert rows[1]["error"].endswith("qa.jsonl:2: needs string fields 'video' and 'question'")
    assert checkpointing.resolve_checkpoint(str(workdir / "checkpoints" / "2")) == (
        str(workdir / "checkpoints"), 2)


def test_predict_needs_no_training_annotations(tmp_path):
    """A main-job checkpoint on a video folder answers after its annotation files are gone:
    the tokenizer (the folder's own word vocabulary) is saved with the checkpoint."""
    import video_files

    root = video_files.make_folder(str(tmp_path / "videos"))
    train = video_files.write_jsonl(str(tmp_path / "videos" / "train.jsonl"),
                                    video_files.qa_entries(8))
    eval_ = video_files.write_jsonl(str(tmp_path / "videos" / "eval.jsonl"),
                                    video_files.qa_entries(4))
    data_flags = ["--config.data.name=video_folder", f"--config.data.root={root}",
                  f"--config.data.train_annotations={train}",
                  f"--config.data.eval_annotations={eval_}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    workdir = tmp_path / "run"
    run = subprocess.run(
        [sys.executable, "-m", "frejax.main", f"--config={CONFIG}", f"--workdir={workdir}",
         "--config.train.num_steps=4", "--config.eval.num_examples=4", *data_flags],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    os.remove(train)
    os.remove(eval_)
    out = subprocess.run(
        [sys.executable, "-m", "frejax.inference.predict", f"--config={CONFIG}", *data_flags,
         f"--checkpoint={workdir}", f"--video={root}/clips/{video_files.CLIPS[0][0]}",
         "--question=what is shown in clip 0"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("answer:")
    # The answer's words come from the folder's vocabulary, which only the checkpoint holds now.
    spec = checkpointing.Checkpointer(str(workdir / "checkpoints")).restore_tokenizer(4)
    assert "shape" in spec.vocab and "clip" in spec.vocab


def test_batch_predict_reports_bad_rows_and_keeps_the_good_ones(trained, qa, tmp_path):
    root, _, videos = trained
    clip, question, _ = videos[0]
    (root / "text.mp4").write_text("not a video")
    rows = [dict(id="good", video=clip, question=question),
            dict(id="missing", video="nope.mp4", question=question),
            dict(id="text", video="text.mp4", question=question),
            dict(id="long", video=clip, question=" ".join(["what"] * 2000)),
            dict(id="fields", video=7)]
    annotations = tmp_path / "qa.jsonl"
    annotations.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "predictions.jsonl"
    summary = predict.predict_file(qa, str(annotations), str(out), str(root))
    written = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert list(written) == ["good", "missing", "text", "long", "fields"]
    assert "prediction" in written["good"] and "error" not in written["good"]
    assert summary["questions"] == 5 and summary["failed"] == 4
    assert "nope.mp4" in written["missing"]["error"]
    assert "not a container" in written["text"]["error"]
    long_error = written["long"]["error"]
    assert "data.max_text_len" in long_error and len(long_error) < 400  # not echoed whole
    assert "needs string fields" in written["fields"]["error"]


def test_a_video_cut_short_warns_and_is_refused_below_the_threshold(trained, qa, tmp_path,
                                                                   caplog):
    root, _, videos = trained
    _, question, _ = videos[0]
    frames = np.random.default_rng(0).integers(0, 255, (80, 32, 32, 3), dtype=np.uint8)
    whole = tmp_path / "whole.mp4"
    write_frames(whole, frames)
    # The same clip with its index first (as streaming writers do), then cut to a third.
    import av  # noqa: PLC0415

    faststart = tmp_path / "faststart.mp4"
    with av.open(str(faststart), "w", format="mp4", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv444p"
        for image in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    data = faststart.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    nominal, present = video_decode.frame_counts(cut.read_bytes())
    assert nominal == 80 and 0 < present < 40
    assert video_decode.frame_counts(whole.read_bytes()) == (80, 80)
    with pytest.raises(video_decode.VideoDecodeError, match=f"{present} of the 80 frames"):
        qa.ask(str(cut), question)  # below the default half
    qa.min_frame_fraction = 0.1
    try:
        with caplog.at_level("WARNING"):
            qa.ask(str(cut), question)
        assert f"{present} of the 80 frames" in caplog.text
    finally:
        qa.min_frame_fraction = 0.5
    # The streaming path's decoder holds to the same rule.
    with pytest.raises(video_decode.VideoDecodeError, match=f"cut.mp4: {present} of the 80"):
        next(video_decode.iter_frames(cut.read_bytes(), 32, where=str(cut)))
    caplog.clear()
    with caplog.at_level("WARNING"):
        streamed = list(video_decode.iter_frames(cut.read_bytes(), 32, where=str(cut),
                                                 min_frame_fraction=0.1))
    assert 0 < len(streamed) <= present and f"{present} of the 80 frames" in caplog.text


def test_a_question_longer_than_the_room_is_refused_before_anything_is_restored():
    config = short_video.get_config("smoke")
    room = predict.question_room(config)
    predict.check_question(" ".join(["which"] * room), config)
    with pytest.raises(ValueError, match=f"--question has {room + 1} words, more than the {room}"):
        predict.check_question(" ".join(["which"] * (room + 1)), config)


def test_predict_refuses_a_config_of_another_model_naming_the_key(trained):
    _, workdir, _ = trained
    config = short_video.get_config("smoke")
    config.model.llm.mlp_dim *= 2
    with pytest.raises(ValueError, match="model.llm.mlp_dim: checkpoint"):
        predict.load_video_qa(config, str(workdir))


def test_input_errors_are_one_line_with_exit_status_2_and_create_nothing(trained, tmp_path):
    root, workdir, videos = trained
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    cases = [
        (["frejax.inference.predict", f"--config={CONFIG}", f"--checkpoint={workdir}",
          f"--video={tmp_path}", "--question=what"], "--video", "is a folder"),
        # The video is read before anything is restored: the checkpoint here is absent.
        (["frejax.inference.predict", f"--config={CONFIG}", f"--checkpoint={tmp_path / 'absent'}",
          f"--video={text}", "--question=what"], "notes.mp4", "not a container"),
        (["frejax.main", f"--config={CONFIG}", "--mode=eval",
          f"--workdir={tmp_path / 'absent'}"], "absent", "no such folder"),
        (["frejax.inference.export", f"--config={CONFIG}",
          f"--workdir={tmp_path / 'absent'}"], "absent", "no such folder"),
    ]
    for argv, names, says in cases:
        out = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
        last = out.stderr.strip().splitlines()[-1]
        assert out.returncode == 2, out.stderr[-2000:]
        assert "Traceback" not in out.stderr, out.stderr[-2000:]
        assert last.startswith(f"{argv[0]}: error:") and names in last and says in last, last
    assert not (tmp_path / "absent").exists()  # a failed path creates nothing


def test_the_engine_streams_a_video_with_the_trained_encoder_and_compressor(trained, qa):
    """``engine.chunked_compressor()`` (docs/inference.md): a clip of one chunk gives the
    tokens the engine's own encode and compress give it."""
    from frejax.inference import streaming  # noqa: PLC0415

    root, _, videos = trained
    path = str(root / videos[0][0])
    compressor = qa.engine.chunked_compressor()
    with open(path, "rb") as f:
        frames = video_decode.iter_frames(f.read(), qa.config.data.image_size)
        streamed = compressor(streaming.chunk_frames(frames, compressor.chunk_frames))
    direct, _ = qa.video_tokens(path)
    np.testing.assert_allclose(streamed.tokens, np.asarray(direct.tokens)[0], rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(streamed.mask, np.asarray(direct.mask)[0])
