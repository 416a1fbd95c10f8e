"""Hostile input, generated: every input ends in success, a named error or a counted skip.

Four targets, each a hypothesis test with a fixed seed and a bounded number of
examples, and a time bound per input (a SIGALRM that fails the example):

* annotation files: valid records of both formats mutated (random JSON, unicode,
  huge and deeply nested fields, invalid UTF-8, NUL bytes), as JSON lines or one
  JSON list; every record is kept or counted as skipped, none vanish;
* video bytes: the test clips of every container the suite makes (MP4/H.264,
  WebM/VP9, AVI/MJPEG, MKV/MPEG-4) truncated, bit-flipped, spliced into each
  other, or random; a clip decodes to the fixed shape or raises ``VideoDecodeError``;
* config overrides: ``--config.<key>=<value>`` through the real flag parser and
  ``config_lib.validate``; a rejected value names the key;
* tokenizer input: any text through the word and the byte-level tokenizers and
  the feature map; ids stay in the vocabulary and exactly one video placeholder
  reaches the model, or the example is a counted bad input.

``pytest tests/test_fuzz_inputs.py --hypothesis-show-statistics`` prints how
many inputs each target tried and how they ended (``event`` lines).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import string

import numpy as np
import pytest
from absl import flags
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from ml_collections import config_flags

import video_files
from data_pipelines import annotations
from data_pipelines import input_pipeline
from data_pipelines import tokenizer as tokenizer_lib
from data_pipelines import video_decode
from frejax import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME_BOUND_S = 5.0  # per input; the slowest valid inputs take well under a second
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=150,
                suppress_health_check=list(HealthCheck))


@contextlib.contextmanager
def time_bound(seconds: float = TIME_BOUND_S):
    """Fails the input if it runs longer than ``seconds`` (a hang or a quadratic path)."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"one input ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    video_files.make_folder(str(root))
    video_files.write_bad_files(str(root / "clips"))
    return root


# ----------------------------------------------------------------------------
# Annotation files.
# ----------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
_text = st.text() | st.sampled_from(["", " ", "<video>", "<video> what", "A", "(b)", "Z.",
                                     "{question}", "\x00", "clips/../../etc/passwd"])
_huge = st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "字", " ", "<video>"]),
                  st.integers(10_000, 200_000))
_fields = ("video", "question", "answer", "options", "family", "conversations", "from", "value")


def _good_record(i: int) -> dict:
    if i % 2:
        return video_files.qa_entries(3)[i % 3]
    return dict(id=f"v{i}", video="clips/h264.mp4", conversations=[
        dict(**{"from": "human"}, value="<video>\nwhat colour is it"),
        dict(**{"from": "gpt"}, value="red"),
        dict(**{"from": "human"}, value="and then"),
        dict(**{"from": "gpt"}, value="blue")])


@st.composite
def _record_line(draw) -> bytes:
    """One line of an annotation file: a valid record, a mutated one or garbage."""
    kind = draw(st.sampled_from(["good", "field", "drop", "json", "text", "bytes", "deep",
                                 "bigint", "huge"]))
    record = _good_record(draw(st.integers(0, 5)))
    event(f"annotation line: {kind}")
    if kind == "field":  # one field, at any depth of a conversation, gets any value
        key = draw(st.sampled_from(_fields))
        value = draw(_json | _text | _huge)
        if key in ("from", "value") and "conversations" in record:
            turn = draw(st.integers(0, len(record["conversations"]) - 1))
            record["conversations"][turn][key] = value
        else:
            record[key] = value
    elif kind == "drop":
        record.pop(draw(st.sampled_from(sorted(record))))
    elif kind == "json":
        record = draw(_json)
    elif kind == "text":
        return draw(st.text()).encode("utf-8", "surrogatepass").replace(b"\n", b" ")
    elif kind == "bytes":
        return draw(st.binary(max_size=64)).replace(b"\n", b" ")
    elif kind == "deep":
        depth = draw(st.integers(1_000, 100_000))
        return b"[" * depth + b"]" * depth
    elif kind == "bigint":
        return b'{"video": "clips/h264.mp4", "question": "q", "answer": 1' + b"0" * 5000 + b"}"
    return json.dumps(record, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


_counter = itertools.count()


@FUZZ
@given(lines=st.lists(_record_line(), min_size=1, max_size=6), as_list=st.booleans())
def test_fuzzed_annotation_files_keep_or_count_every_record(folder, lines, as_list):
    path = str(folder / f"annotations_{next(_counter)}.json")
    with open(path, "wb") as f:
        f.write(b"[" + b",\n".join(lines) + b"]" if as_list else b"\n".join(lines))
    # A file that starts with "[" is read as one JSON list (as_list, or JSON lines
    # whose first line is a list), which must parse as a whole.
    is_list = as_list or lines[0].lstrip().startswith(b"[")
    with time_bound():
        try:
            index = annotations.load_annotations(path, str(folder))
        except ValueError as e:
            assert is_list and path in str(e), e
            event("annotation file: rejected whole, naming the file")
            return
    kept = {r.where.split("#")[0] for r in index.records}  # entries that gave records
    assert len(kept) + index.num_bad == index.num_entries  # nothing lost uncounted
    if not is_list:
        assert index.num_entries == sum(1 for l in b"\n".join(lines).splitlines() if l.strip())
    for r in index.records:
        assert r.question and r.answer and tokenizer_lib.VIDEO not in r.question + r.answer
        annotations.resolve_video(r.video, str(folder))
    event(f"annotation file: {len(index.records)} records kept, {index.num_bad} counted bad")


# ----------------------------------------------------------------------------
# Video bytes.
# ----------------------------------------------------------------------------


def _clip_bytes(folder) -> list[bytes]:
    names = [c[0] for c in video_files.CLIPS] + ["corrupt.mp4", "zero.avi", "notes.mp4"]
    return [(folder / "clips" / n).read_bytes() for n in names]


@st.composite
def _video_bytes(draw, seeds: list[bytes]) -> bytes:
    data = draw(st.sampled_from(seeds))
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "insert", "random", "intact"]))
    event(f"video bytes: {kind}")
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data)))]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 16))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(out)
    if kind == "splice":
        other = draw(st.sampled_from(seeds))
        return data[:draw(st.integers(0, len(data)))] + other[draw(st.integers(0, len(other))):]
    if kind == "insert":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=256)) + data[at:]
    if kind == "random":
        return draw(st.binary(max_size=4096))
    return data


@pytest.fixture(scope="module")
def clip_seeds(folder):
    return _clip_bytes(folder)


@FUZZ
@given(data=st.data(), mode=st.sampled_from(video_decode.SAMPLING_MODES),
       resize=st.sampled_from(video_decode.RESIZE_MODES), num_frames=st.integers(1, 6),
       size=st.integers(4, 24), seed=st.none() | st.integers(0, 2**31 - 1))
def test_fuzzed_video_bytes_decode_or_raise_a_named_error(clip_seeds, data, mode, resize,
                                                          num_frames, size, seed):
    video = data.draw(_video_bytes(clip_seeds))
    sampling = video_decode.FrameSampling(num_frames=num_frames, image_size=size, mode=mode,
                                          resize=resize)
    with time_bound():
        try:
            frames, mask = video_decode.decode_video(video, sampling, window_seed=seed)
        except video_decode.VideoDecodeError as e:
            assert e.kind in video_decode.DECODE_ERRORS
            event(f"video: {e.kind}")
            return
    assert frames.shape == (num_frames, size, size, 3) and frames.dtype == np.uint8
    assert mask.dtype == bool and mask[0] and list(mask) == sorted(mask, reverse=True)
    assert not frames[~mask].any()  # padding frames are zeros
    event("video: decoded")


@FUZZ
@given(data=st.data(), every=st.integers(1, 3))
def test_fuzzed_video_bytes_stream_or_raise_a_named_error(clip_seeds, data, every):
    video = data.draw(_video_bytes(clip_seeds))
    with time_bound():
        try:
            frames = list(video_decode.iter_frames(video, 8, every=every))
        except video_decode.VideoDecodeError as e:
            event(f"stream: {e.kind}")
            return
    assert frames and all(f.shape == (8, 8, 3) and f.dtype == np.uint8 for f in frames)
    event("stream: decoded")


# ----------------------------------------------------------------------------
# Config overrides.
# ----------------------------------------------------------------------------

_DEFAULTS = config_lib._flatten(config_lib.base_config())  # noqa: SLF001
_KEYS = sorted(_DEFAULTS)
_WORDS = sorted({v for v in _DEFAULTS.values() if isinstance(v, str) and v.isidentifier()}
                | {"fre_res", "uniform_frames", "fastvid", "none", "full", "bfloat16", "x"})


def _typed_value(key: str) -> st.SearchStrategy[str]:
    """Values of the key's own type, near and far from its default, as a flag writes them."""
    default = _DEFAULTS[key]
    if isinstance(default, bool):
        return st.sampled_from(["True", "False", "1", "0", "yes", ""])
    if isinstance(default, int):
        return st.integers(-3, max(2 * default, 8)).map(str) | st.sampled_from(
            ["-1", "0", str(2**40), "1.5", ""])
    if isinstance(default, float):
        return st.floats(-2.0, 2 * default + 2).map(repr) | st.sampled_from(
            ["nan", "inf", "-inf", "0", "1e400", "-0.0"])
    if isinstance(default, tuple):
        return st.lists(st.integers(-2, 9), max_size=4).map(
            lambda v: "(" + ",".join(map(str, v)) + ("," if len(v) == 1 else "") + ")")
    return st.sampled_from(_WORDS) | st.text(alphabet=string.printable, max_size=16)


_any_value = (
    st.integers(-(2**40), 2**40).map(str) | st.floats(allow_nan=True).map(repr)
    | st.sampled_from(["True", "None", "", "()", "(2,2,1)", "[1, 2]", "'x'", "((1,2),)"])
    | st.text(alphabet=string.printable, max_size=20))
_typed_override = st.sampled_from(_KEYS).flatmap(
    lambda k: st.tuples(st.just(k), _typed_value(k)))
_override = st.one_of(
    _typed_override, _typed_override, _typed_override,  # 3 in 5: a real key, its own type
    st.tuples(st.sampled_from(_KEYS), _any_value),
    st.tuples(st.builds(lambda k, tail: k + tail, st.sampled_from(_KEYS),
                        st.sampled_from([".x", "_", "x"]))
              | st.text(string.ascii_lowercase + "._", min_size=1, max_size=12), _any_value))


@FUZZ
@given(overrides=st.lists(_override, min_size=1, max_size=3))
@example(overrides=[("mesh.shape", "")])       # found by this test: int('') in the mesh check
@example(overrides=[("mesh.shape", "None")])
def test_fuzzed_config_overrides_pass_or_name_the_key(overrides):
    argv = ["main", "--config=" + os.path.join(REPO, "configs", "short_video.py") + ":smoke"]
    argv += [f"--config.{k}={v}" for k, v in overrides]
    named = [k for k, _ in overrides] + ["config."]
    with time_bound():
        try:
            config_lib.check_override_flags(argv)
            values = flags.FlagValues()
            config = config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                                     lock_config=True, sys_argv=argv)
            values(argv)
            config_lib.validate(config.value)
        except (SystemExit, flags.Error, ValueError, TypeError, KeyError,
                AttributeError) as e:
            message = str(e)
            assert any(n in message for n in named) or any(
                f"--config.{k}" in message for k, _ in overrides), (type(e), message)
            event(f"config: rejected by {'the schema' if isinstance(e, config_lib.UnknownKeyError) else 'the flag parser' if isinstance(e, flags.Error) else 'validate'} ({type(e).__name__})")
            return
    event("config: accepted")


# ----------------------------------------------------------------------------
# Tokenizer input.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    import llava_fixtures  # noqa: PLC0415  (needs the `tokenizers` package of the test extra)

    folder = tmp_path_factory.mktemp("byte_tokenizer")
    llava_fixtures.write_byte_tokenizer(str(folder))
    texts = [dict(question=q, answer=a) for q, a in
             [("what colour is the car", "red"), ("how many", "three")]]
    words = tokenizer_lib.word_tokenizer_for(
        [t for e in texts for t in (e["question"], e["answer"])])
    return dict(word=words, byte=tokenizer_lib.HuggingFaceTokenizer(str(folder)))


_any_text = st.text() | st.lists(st.sampled_from(
    ["<video>", "<|im_start|>", "<|im_end|>", "<pad>", "<eos>", "<bos>", "{question}", " ",
     "\n", "a", "é", "\u200b", "\x00"]), max_size=12).map("".join) | _huge.map(
         lambda s: s[:20_000])


@FUZZ
@given(kind=st.sampled_from(["word", "byte"]), question=_any_text, answer=_any_text,
       skip_bad_text=st.booleans())
def test_fuzzed_text_stays_in_the_vocabulary_with_one_video_placeholder(
        tokenizers, kind, question, answer, skip_bad_text):
    tok = tokenizers[kind]
    with time_bound():
        ids = tok.encode(question)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert isinstance(tok.decode(ids), str)
        features = input_pipeline.VideoQAFeatures(tok, 64, 16, skip_bad_text=skip_bad_text)
        element = dict(question=question, answer=answer, index=0, family=0,
                       frames=np.zeros((1, 2, 2, 3), np.uint8), frame_mask=np.ones(1, bool))
        try:
            out = features.map(element)
        except ValueError as e:  # without skip_bad_text (our own data): stop, naming why
            assert not skip_bad_text, e
            assert "data.max_" in str(e) or "example 0" in str(e), e
            event(f"text ({kind}): rejected ({type(e).__name__})")
            return
    tokens = out["tokens"][out["text_mask"]]
    assert (tokens == tok.video_id).sum() == 1  # one placeholder, where the video goes
    assert ((0 <= out["tokens"]) & (out["tokens"] < tok.vocab_size)).all()
    error = input_pipeline.INPUT_ERRORS[int(out["input_error"])]
    assert out["example_valid"] == (error == "none")
    event(f"text ({kind}): {'kept' if error == 'none' else 'counted as ' + error}")


_GEOMETRY = [k for k in _KEYS if k.startswith(("model.", "compressor.")) and
             not k.endswith(("pretrained", "attention", "remat")) and
             isinstance(_DEFAULTS[k], (int, float, str)) and k != "model.llm.vocab_size"]
_GEOMETRY += ["data.num_frames", "data.image_size"]


def _model_value(key: str) -> st.SearchStrategy[str]:
    """Typed values whose model still builds in seconds (the abstract build grows faster
    than linearly with depth), sizes up to 8x the smoke model's."""
    if isinstance(_DEFAULTS[key], int) and not isinstance(_DEFAULTS[key], bool):
        return st.integers(-2, 16).map(str)
    return _typed_value(key)


@settings(FUZZ, max_examples=100)
@given(overrides=st.lists(st.sampled_from(_GEOMETRY).flatmap(
    lambda k: st.tuples(st.just(k), _model_value(k))), min_size=1, max_size=2))
def test_fuzzed_model_overrides_build_the_model_or_name_the_key(overrides):
    """Accepted overrides of the model's geometry go on to the abstract model, where the
    compressor checks its budget: a bad one fails there, naming a key, before any compute."""
    from frejax.training.run import Run  # noqa: PLC0415

    argv = ["main", "--config=" + os.path.join(REPO, "configs", "short_video.py") + ":smoke"]
    argv += [f"--config.{k}={v}" for k, v in overrides]
    with time_bound(30):
        try:
            values = flags.FlagValues()
            config = config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                                     lock_config=True, sys_argv=argv)
            values(argv)
            config = config.value
            config_lib.validate(config)
        except (flags.Error, ValueError) as e:
            event(f"model: rejected before the build ({type(e).__name__})")
            return
        run = Run(config)  # the smoke mesh: data over the 8 test devices
        try:
            with run:
                setup = run.setup
        except ValueError as e:
            message = str(e)
            assert any(k in message for k in _KEYS), message  # names the key at fault
            event("model: rejected by the build, naming a key")
            return
    assert setup.num_visual_tokens >= 1
    event("model: built")
