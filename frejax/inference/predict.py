r"""Video question answering from the command line with a trained checkpoint.

    python -m frejax.inference.predict --config=configs/long_video.py --checkpoint=workdirs/long_video \
        --video=clip.mp4 --question="which way did the object move"
    python -m frejax.inference.predict --config=configs/long_video.py --checkpoint=workdirs/long_video \
        --annotations=qa.jsonl --output=predictions.jsonl

``--checkpoint`` is a workdir, its ``checkpoints/`` folder (latest step) or one
step folder. ``--config`` must describe the model that was trained (the same
file and arg as for ``frejax.main``).

Single mode prints the answer, the visual tokens used versus full, and timings
of each stage. Batch mode reads a JSON list or JSON lines of
``{"id", "video", "question", "answer"}`` (``id`` and ``answer`` optional,
``options`` rendered as for training; video paths relative to ``--video_root``,
default the annotation file's folder) and writes one JSON line per question:
``{"id", "video", "question", "prediction", "answer"}``.

Every video goes through ``frejax.inference.token_cache``: its compressed tokens and the
LLM's keys/values for the prompt up to the video are computed once and reused
by every further question about it; batch mode reports the saving.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags, logging
from ml_collections import config_flags

from data_pipelines import annotations as annotations_lib
from data_pipelines import tokenizer as tokenizer_lib
from data_pipelines import video_decode
from frejax import cli
from frejax.compression import CompressedTokens
from frejax.inference import token_cache
from frejax.inference.engine import Engine
from frejax.training.run import FIT, Run

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file of the trained model, optionally with an arg.", lock_config=True)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A workdir, its checkpoints/ folder, or one checkpoints/<step> folder.")
_VIDEO = flags.DEFINE_string("video", None, "A video file (single mode).")
_QUESTION = flags.DEFINE_string("question", None, "The question (single mode).")
_ANNOTATIONS = flags.DEFINE_string(
    "annotations", None, "JSON / JSONL of {id, video, question, answer} (batch mode).")
_VIDEO_ROOT = flags.DEFINE_string(
    "video_root", None, "Folder the annotation video paths are relative to (batch mode).")
_OUTPUT = flags.DEFINE_string("output", None, "Predictions JSONL (batch mode).")
_MAX_NEW_TOKENS = flags.DEFINE_integer(
    "max_new_tokens", 0, "Answer tokens to generate; 0: config.eval.max_new_tokens.")
_CACHE_PREFIX = flags.DEFINE_bool(
    "cache_prefix", True, "Also cache the LLM keys/values of the prompt up to the video.")
_MIN_FRAME_FRACTION = flags.DEFINE_float(
    "min_frame_fraction", 0.5, "Refuse a video holding fewer than this fraction of the frames"
    " its header announces (a file cut short); above it, warn and answer.")
flags.mark_flags_as_required(["config", "checkpoint"])

STAGES = ("decode_video", "encode", "compress", "prefill", "decode")
DEFAULT_QUESTION_LEN = 64

@dataclasses.dataclass
class Answer:
    text: str
    tokens: list[int]
    timings: dict[str, float]   # seconds per stage (``STAGES``); a cached stage is absent
    cached: bool                # the video's tokens came from the cache
    visual_tokens: int          # valid visual tokens this video gave the LLM


class VideoQA:
    """A trained video MLLM answering questions about video files, with a token cache.

    Args:
      engine: the model's inference engine on a mesh whose ``data`` axis has size 1
        (one video at a time), e.g. built by ``load_video_qa``.
      cache_prefix: also cache the LLM keys/values of the prompt up to the video.
      fingerprint: identifies the weights in cache keys (checkpoint folder and step).
    """

    def __init__(self, engine: Engine, *, cache_prefix: bool = True, fingerprint: str = "",
                 min_frame_fraction: float = 0.5):
        self.engine = engine
        self.min_frame_fraction = float(min_frame_fraction)
        config, self.tokenizer = engine.config, engine.tokenizer
        self.config, self.params, self.mesh = config, engine.params, engine.mesh
        self.max_new_tokens = engine.max_new_tokens
        d = config.data
        self.sampling = video_decode.FrameSampling(
            num_frames=d.num_frames, image_size=d.image_size, mode=d.sampling,
            fps=d.sample_fps, resize=d.resize)
        self.template = d.prompt_template
        tokenizer_lib.check_template(self.template)
        # The prompt before the video is the same for every question only if the question
        # comes after the video.
        self.cache_prefix = cache_prefix and (
            self.template.index(tokenizer_lib.VIDEO) < self.template.index("{question}"))
        self.fingerprint = token_cache.fingerprint(
            fingerprint, d.num_frames, d.image_size, d.sampling, d.sample_fps, d.resize,
            config.compressor.to_dict(), self.template)
        self.num_visual, self.full_visual = engine.num_visual, engine.full_visual
        # Room for the question after the video: data.max_text_len, or (0, sized from the
        # training data, which predict never reads) a fixed 64 tokens.
        self.question_len = question_room(config)

    @property
    def cache(self) -> token_cache.VideoTokenCache:
        return self.engine.cache

    @cache.setter
    def cache(self, cache: token_cache.VideoTokenCache) -> None:
        self.engine.cache = cache

    def _timed(self, timings: dict, stage: str, fn, *args, **kwargs):
        out, seconds = self.engine.call(fn, *args, **kwargs)
        timings[stage] = timings.get(stage, 0.0) + seconds
        return out

    def _prompt(self, question: str) -> tuple[tuple[int, ...], list[int]]:
        """-> (tokens before the placeholder, tokens after it)."""
        tok = self.tokenizer
        if isinstance(tok, tokenizer_lib.WordTokenizer):
            known = set(tok.vocab)
            unknown = sorted({w for w in tokenizer_lib.split_words(question) if w not in known})
            if unknown:  # they all read as one id: the model cannot tell them apart
                logging.warning("question words the model never saw (read as unknown): %s",
                                ", ".join(unknown[:20]) + (" ..." if len(unknown) > 20 else ""))
        ids = [tok.bos_id] + tok.encode(tokenizer_lib.format_prompt(question,
                                                                    template=self.template))
        if ids.count(tok.video_id) != 1:
            raise ValueError(f"prompt must hold exactly one video placeholder: {question!r}")
        p = ids.index(tok.video_id)
        before, after = tuple(ids[:p]), ids[p + 1:]
        if not after:
            raise ValueError(f"template {self.template!r} leaves nothing after the video")
        if len(after) > self.question_len:
            raise ValueError(f"question has {len(after)} tokens, more than the {self.question_len}"
                             f" this predictor has room for (set data.max_text_len):"
                             f" {question[:60]!r}{'...' if len(question) > 60 else ''}")
        return before, after

    def video_tokens(self, path: str, timings: dict | None = None) -> tuple[CompressedTokens, bool]:
        """The compressed tokens of the video file ``path`` -> (tokens, came from the cache)."""
        entry, hit = self._entry(path, {} if timings is None else timings)
        return entry.visual, hit

    def _entry(self, path: str, timings: dict) -> tuple[token_cache.CachedVideo, bool]:
        key = token_cache.video_key(path, self.fingerprint)
        entry = self.cache.get(key)
        if entry is not None:
            return entry, True
        start = time.perf_counter()
        with open(path, "rb") as f:
            data = f.read()
        complete = video_decode.check_complete(data, path, self.min_frame_fraction) == 1.0
        frames, frame_mask = video_decode.decode_video(data, self.sampling,
                                                       cut_short=not complete)
        timings["decode_video"] = time.perf_counter() - start
        latents = self._timed(timings, "encode", self.engine.frame_tokens,
                              jnp.asarray(frames[None]))
        visual = self._timed(timings, "compress", self.engine.compress, latents,
                             jnp.asarray(frame_mask[None]))
        entry = token_cache.CachedVideo(visual=visual)
        self.cache.put(key, entry)
        return entry, False

    def ask(self, video: str, question: str) -> Answer:
        """Answers ``question`` about the video file ``video``."""
        timings: dict[str, float] = {}
        before, after = self._prompt(question)
        entry, hit = self._entry(video, timings)
        prefix_len = len(before) + self.num_visual
        if entry.prefix is not None and entry.prefix_tokens == before:
            prefix, next_position = entry.prefix, entry.next_position
        else:
            max_len = prefix_len + self.question_len + self.max_new_tokens
            prefix, next_position = self._timed(
                timings, "prefill", self.engine.prefill_video, entry.visual,
                jnp.asarray([before], jnp.int32), max_len=max_len)
            if self.cache_prefix:
                entry.prefix, entry.prefix_tokens = prefix, before
                entry.prefix_len, entry.next_position = prefix_len, next_position
        question_ids = jnp.asarray([after + [0] * (self.question_len - len(after))], jnp.int32)
        length = jnp.asarray([len(after)], jnp.int32)
        first_slot = jnp.asarray([prefix_len], jnp.int32)
        cache, token = self._timed(timings, "prefill", self.engine.prefill_text,
                                   prefix, next_position, first_slot, question_ids, length)
        generated = self._timed(timings, "decode", self.engine.decode, cache, token,
                                first_slot + length, next_position + length)
        tokens = [int(t) for t in jax.device_get(generated)[0]]
        return Answer(text=self.tokenizer.decode(tokens), tokens=tokens, timings=timings,
                      cached=hit, visual_tokens=int(jax.device_get(entry.visual.mask).sum()))


# ----------------------------------------------------------------------------
# Checkpoints and annotation files.
# ----------------------------------------------------------------------------


def load_video_qa(config: Any, checkpoint: str, *, max_new_tokens: int = 0,
                  cache_prefix: bool = True, min_frame_fraction: float = 0.5
                  ) -> tuple[VideoQA, int]:
    """Restores ``checkpoint`` for ``config`` -> (``VideoQA``, step).

    The mesh is the training mesh with ``data`` of size 1: params keep their
    fsdp/tensor layout.
    """
    run = Run(config, devices=FIT, shape=(1, *config.mesh.shape[1:]))
    restored = run.restore(checkpoint, params_only=True)
    engine = Engine(run, restored.params, max_new_tokens=max_new_tokens)
    qa = VideoQA(engine, cache_prefix=cache_prefix, min_frame_fraction=min_frame_fraction,
                 fingerprint=f"{restored.directory}@{restored.step}")
    return qa, restored.step


def check_file(flag: str, path: str) -> None:
    """A flag's file must be a readable file: a folder or a missing path is named."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{flag} {path}: is a folder, not a file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path}: no such file")


def read_questions(path: str, root: str) -> Iterator[dict]:
    """A JSON list or JSON lines of ``{id?, video, question, answer?, options?}``."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        entries = json.loads(text)
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a JSON list or JSON lines")
        numbered = list(enumerate(entries, 1))
    except json.JSONDecodeError:
        numbered = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    numbered.append((line_no, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: not JSON: {e}") from None
    for n, entry in numbered:
        where = f"{path}:{n}"
        if not isinstance(entry, dict) or not isinstance(entry.get("video"), str) \
                or not isinstance(entry.get("question"), str):
            # A bad row is reported in the output, not fatal: the good rows still run.
            got = entry if isinstance(entry, dict) else {}
            yield dict(id=str(got.get("id", n)), video=str(got.get("video", "")),
                       question=str(got.get("question", "")), answer="",
                       error=f"{where}: needs string fields 'video' and 'question'")
            continue
        question, answer = entry["question"].strip(), str(entry.get("answer", "")).strip()
        try:
            if "options" in entry:
                question, answer = annotations_lib.render_multiple_choice(
                    question, entry["options"], answer)
            video_path = annotations_lib.resolve_video(entry["video"], root)
        except ValueError as e:
            yield dict(id=str(entry.get("id", n)), video=entry["video"], question=question,
                       answer=answer, error=f"{where}: {cli.one_line(e)}")
            continue
        yield dict(id=entry.get("id", str(n)), video=entry["video"], path=video_path,
                   question=question, answer=answer)


def predict_file(qa: VideoQA, annotations_path: str, output: str, root: str) -> dict:
    """Answers every question of ``annotations_path`` into ``output`` (JSONL) -> a summary.

    The summary's timings leave out the first video's questions when there are
    others: they include compiling every stage.
    """
    timings = []  # (video number, cached, seconds)
    videos: dict[str, int] = {}
    count, failed = 0, 0
    tmp = output + ".tmp"
    with open(tmp, "w") as out:
        for q in read_questions(annotations_path, root):
            row = dict(id=q["id"], video=q["video"], question=q["question"])
            error = q.get("error")
            if error is None:
                start = time.perf_counter()
                try:
                    ans = qa.ask(q["path"], q["question"])
                except cli.INPUT_ERRORS as e:  # this row's input: reported, the rest go on
                    error = f"{q['video']}: {cli.one_line(e)}"
                else:
                    number = videos.setdefault(q["path"], len(videos))
                    timings.append((number, ans.cached, time.perf_counter() - start))
                    row["prediction"] = ans.text
            if error is not None:
                logging.warning("row %s skipped: %s", q["id"], error)
                row["error"] = error
                failed += 1
            out.write(json.dumps(dict(row, answer=q["answer"])) + "\n")
            count += 1
    os.replace(tmp, output)
    warm = [t for t in timings if t[0] > 0] if len(videos) > 1 else timings
    first = [s for _, cached, s in warm if not cached]
    repeat = [s for _, cached, s in warm if cached]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return dict(questions=count, failed=failed, videos=len(videos),
                cache_hits=sum(cached for _, cached, _ in timings),
                first_question_s=mean(first), cached_question_s=mean(repeat),
                speedup=mean(first) / mean(repeat) if repeat else float("nan"))


def format_answer(ans: Answer, qa: VideoQA) -> str:
    ms = ", ".join(f"{s} {ans.timings[s] * 1e3:.1f}" for s in STAGES if s in ans.timings)
    return "\n".join([
        f"answer: {ans.text}",
        f"visual tokens: {ans.visual_tokens} used of {qa.num_visual}"
        f" (full {qa.full_visual}, {qa.full_visual / qa.num_visual:.1f}x fewer)",
        f"timings (ms): {ms}; total {sum(ans.timings.values()) * 1e3:.1f}"
        + (" (video tokens from the cache)" if ans.cached else ""),
    ])


def question_room(config: Any) -> int:
    """Tokens a question may take after the video: data.max_text_len, or (0: sized from
    the training data, which predict never reads) a fixed ``DEFAULT_QUESTION_LEN``."""
    return int(config.data.max_text_len) or DEFAULT_QUESTION_LEN


def check_question(question: str, config: Any) -> None:
    """Refuses, before anything is restored, a question of more words than the predictor
    has tokens for (every tokenizer here gives a word one token or more; the exact count,
    with the checkpoint's tokenizer, is checked when the question is asked)."""
    words = len(question.split())
    if words > question_room(config):
        raise ValueError(f"--question has {words} words, more than the {question_room(config)}"
                         f" tokens this predictor has room for (set data.max_text_len):"
                         f" {question[:60]!r}{'...' if len(question) > 60 else ''}")


def check_video(path: str, min_fraction: float) -> None:
    """Refuses, before anything is restored, a file FFmpeg cannot read as a video or one
    with fewer frames present than ``min_fraction`` of its header's count (demuxed, not
    decoded). A file cut short above the threshold is warned about when it is answered."""
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise video_decode.VideoDecodeError("empty_file", f"--video {path}: the file has 0 bytes")
    try:
        nominal, present = video_decode.frame_counts(data)
        if nominal and present < min_fraction * nominal:
            video_decode.check_complete(data, f"--video {path}", min_fraction)
    except video_decode.VideoDecodeError as e:
        detail = str(e).removeprefix(f"{e.kind}: ").removeprefix(f"--video {path}: ")
        raise video_decode.VideoDecodeError(e.kind, f"--video {path}: {detail}") from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    single = _VIDEO.value is not None or _QUESTION.value is not None
    if single == (_ANNOTATIONS.value is not None):
        raise app.UsageError("give either --video and --question, or --annotations")
    if single and not (_VIDEO.value and _QUESTION.value):
        raise app.UsageError("single mode needs both --video and --question")
    if _ANNOTATIONS.value and not _OUTPUT.value:
        raise app.UsageError("batch mode needs --output")
    cli.quiet_libraries()
    # Inputs first: nothing is restored for a command that cannot run.
    if single:
        check_file("--video", _VIDEO.value)
        check_video(_VIDEO.value, _MIN_FRAME_FRACTION.value)
        check_question(_QUESTION.value, _CONFIG.value)
    else:
        check_file("--annotations", _ANNOTATIONS.value)
    qa, step = load_video_qa(_CONFIG.value, _CHECKPOINT.value,
                             max_new_tokens=_MAX_NEW_TOKENS.value,
                             cache_prefix=_CACHE_PREFIX.value,
                             min_frame_fraction=_MIN_FRAME_FRACTION.value)
    logging.info("Restored step %d", step)
    if single:
        print(format_answer(qa.ask(_VIDEO.value, _QUESTION.value), qa))
        return
    root = _VIDEO_ROOT.value or os.path.dirname(os.path.abspath(_ANNOTATIONS.value))
    summary = predict_file(qa, _ANNOTATIONS.value, _OUTPUT.value, root)
    print(f"wrote {summary['questions']} rows for {summary['videos']} videos to"
          f" {_OUTPUT.value}; {summary['failed']} failed (their rows hold an 'error' field)")
    if summary["cache_hits"]:  # timings to compare only when a video's tokens were reused
        print(f"token cache: {summary['cache_hits']} questions reused a video's tokens;"
              " after the first video (compilation): first question per video"
              f" {summary['first_question_s'] * 1e3:.1f} ms, later questions"
              f" {summary['cached_question_s'] * 1e3:.1f} ms ({summary['speedup']:.1f}x faster)")
    else:
        print("token cache: no question reused a video's tokens")


if __name__ == "__main__":
    cli.run(main, "frejax.inference.predict")
