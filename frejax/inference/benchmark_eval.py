r"""A standard video benchmark on a pretrained video MLLM at a token budget, scored as lmms-eval.

    python -m frejax.inference.benchmark_eval \
        --config=configs/llava_onevision.py:llava=/models/llava-ov-7b,compressor=fre_res_frames,ratio=10 \
        --benchmark=videomme --data=/data/Video-MME --out=eval_results

Reads the benchmark's released files (``data_pipelines.video_benchmarks``), samples
``config.data.num_frames`` frames per video as lmms-eval does (``np.linspace``, resized
to the tower's square input), compresses each video's tokens once (a video asked several
questions is encoded once: the compressed-token cache), and answers every question
greedily in batches of static shape (``--batch_size`` prompts padded to one length).
Predictions are stripped, as lmms-eval's LLaVA-OneVision model strips them, then
extracted and scored by the benchmark's own rules.

Writes ``<out>/<benchmark>__<compressor>__r<ratio>.json`` (score, per category, tokens
per video, timing: encode, prefill, time to first token, decode; skipped videos by cause)
and ``..._samples.jsonl`` (the lines lmms-eval 0.7.3's ``--log_samples`` writes). Runs on one CPU, one
GPU or a mesh (``--config.mesh.shape``): the batch is split over ``data``, weights over
``fsdp`` / ``tensor``.

A compressor with learned parameters (``fre_res``'s absorber) needs them trained:
``--checkpoint`` restores a frejax run; without one such a compressor is refused, and the
training-free ``fre_res_frames`` is the Fre-Res to evaluate a pretrained model with.
"""

from __future__ import annotations

import collections
import json
import os
import random
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import flags, logging
from ml_collections import config_flags

from data_pipelines import tokenizer as tokenizer_lib
from data_pipelines import video_benchmarks, video_decode
from frejax import cli
from frejax.compression import CompressedTokens
from frejax.inference.engine import Engine
from frejax.training.run import FIT, Run

PAD_TO = 16  # prompt lengths round up to a multiple: few compiled shapes


class BenchmarkAnswerer:
    """Benchmark questions in batches of static shape, through the model's ``Engine``."""

    def __init__(self, engine: Engine, *, batch_size: int):
        self.engine, self.tok = engine, engine.tokenizer
        self.mesh, self.max_new_tokens = engine.mesh, engine.max_new_tokens
        self.batch_size = int(batch_size)
        data_axis = self.mesh.shape["data"]
        if self.batch_size % data_axis:
            raise ValueError(f"--batch_size {self.batch_size} must divide over the mesh's data"
                             f" axis ({data_axis})")
        self.num_visual, self.full_visual = engine.num_visual, engine.full_visual
        self.tokens_used = engine.tokens_used
        self.template = engine.config.data.prompt_template
        prefix, _ = self.template.split(tokenizer_lib.VIDEO)
        self.prefix = self._bos() + (self.tok.encode(prefix) if prefix else [])

    def _bos(self) -> list[int]:
        return [self.tok.bos_id] if getattr(self.tok, "add_bos", True) else []

    def prompt_tokens(self, question: str) -> list[int]:
        """Token ids of the prompt after the video placeholder."""
        after = self.template.split(tokenizer_lib.VIDEO)[1].replace("{question}", question)
        return self.tok.encode(after)

    def encode_videos(self, clips: list[tuple[np.ndarray, np.ndarray]]):
        """Frames of up to ``batch_size`` videos -> per-video ``CompressedTokens`` (host) and s."""
        b, n = self.batch_size, len(clips)
        frames = np.stack([c[0] for c in clips] + [clips[-1][0]] * (b - n))
        masks = np.stack([c[1] for c in clips] + [clips[-1][1]] * (b - n))
        out, seconds = self.engine.call(self.engine.encode, jnp.asarray(frames),
                                        jnp.asarray(masks))
        host = jax.device_get(out)
        return [jax.tree.map(lambda x, i=i: x[i], host) for i in range(n)], seconds

    def answer(self, visuals: list[CompressedTokens], prompts: list[list[int]], length: int):
        """Greedy answers -> (texts, prefill seconds, decode seconds)."""
        b, n = self.batch_size, len(prompts)
        visuals = visuals + [visuals[-1]] * (b - n)
        prompts = prompts + [prompts[-1]] * (b - n)
        rest = np.zeros((b, length), np.int32)
        for i, p in enumerate(prompts):
            rest[i, :len(p)] = p
        visual = jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *visuals)
        lengths = jnp.asarray([len(p) for p in prompts], jnp.int32)
        prefix = jnp.broadcast_to(jnp.asarray(self.prefix, jnp.int32), (b, len(self.prefix)))
        max_len = len(self.prefix) + self.num_visual + length + self.max_new_tokens
        (cache, token, slot, position), prefill_s = self.engine.call(
            self.engine.prefill, visual, prefix, jnp.asarray(rest), lengths, max_len=max_len)
        generated, decode_s = self.engine.call(self.engine.decode, cache, token, slot, position)
        generated = jax.device_get(generated)
        texts = [self.tok.decode([int(t) for t in generated[i]]).strip() for i in range(n)]
        return texts, prefill_s, decode_s


def answer_all(ev: BenchmarkAnswerer, items: list[tuple[str, str]], sampling: Any, *,
               desc: str = "answering") -> dict:
    """``(video path, prompt text)`` pairs -> every reply (None where the video was
    skipped), in batches of ``ev.batch_size``; each video decoded and encoded once.

    Returns ``replies``, ``bad`` (video -> cause of its skip), ``timing``, ``counts``,
    ``length`` (the padded prompt length) and ``videos`` (how many were encoded).
    """
    prompts = [ev.prompt_tokens(text) for _, text in items]
    length = max((len(p) for p in prompts), default=1)
    length = -(-length // PAD_TO) * PAD_TO
    cache: dict[str, CompressedTokens] = {}  # video path -> compressed tokens
    bad: dict[str, str] = {}
    timing = collections.defaultdict(float)
    counts = collections.Counter()
    replies: list[str | None] = [None] * len(items)

    def load(path):
        start = time.perf_counter()
        try:
            with open(path, "rb") as f:
                clip = video_decode.decode_video(f.read(), sampling)
        except FileNotFoundError:
            raise video_decode.VideoDecodeError("unreadable_file", f"{path}: no such file") \
                from None
        timing["decode_video_s"] += time.perf_counter() - start
        return clip

    for start in tqdm.trange(0, len(items), ev.batch_size, desc=desc, unit="batch"):
        batch = range(start, min(start + ev.batch_size, len(items)))
        new = [p for p in dict.fromkeys(items[i][0] for i in batch)
               if p not in cache and p not in bad]
        clips, paths = [], []
        for path in new:
            try:
                clips.append(load(path))
                paths.append(path)
            except video_decode.VideoDecodeError as e:
                bad[path] = e.kind
                logging.warning("skipping %s: %s", path, e)
        if clips:
            encoded, seconds = ev.encode_videos(clips)
            cache.update(zip(paths, encoded))
            timing["encode_s"] += seconds
            counts["encode_calls"] += 1
            counts["videos_encoded"] += len(clips)
        kept = [i for i in batch if items[i][0] in cache]
        if not kept:
            continue
        texts, prefill_s, decode_s = ev.answer([cache[items[i][0]] for i in kept],
                                               [prompts[i] for i in kept], length)
        timing["prefill_s"] += prefill_s
        timing["decode_s"] += decode_s
        counts["answer_calls"] += 1
        for i, text in zip(kept, texts):
            replies[i] = text
    return dict(replies=replies, bad=bad, timing=timing, counts=counts, length=length,
                videos=len(cache))


def evaluate_benchmark(ev: BenchmarkAnswerer, task: Any, docs: list, sampling: Any, *, seed: int) -> dict:
    """Every doc through ``ev``; returns the report row and the samples log."""
    rng = random.Random(seed)
    texts = [task.doc_to_text(d) for d in docs]
    out = answer_all(ev, [(d.video, t) for d, t in zip(docs, texts)], sampling, desc=task.NAME)
    timing, counts, length = out["timing"], out["counts"], out["length"]
    skipped = collections.Counter(out["bad"][d.video] for d in docs if d.video in out["bad"])
    samples, values = [], []
    generation = dict(max_new_tokens=ev.max_new_tokens, temperature=0, do_sample=False,
                      num_beams=1)
    for d, text, reply in zip(docs, texts, out["replies"]):
        if reply is None:
            continue
        value = task.process(d, reply, rng)
        values.append(value)
        samples.append(video_benchmarks.sample_record(
            d, text, generation, reply, reply, task.METRIC, value))
    result = task.aggregate(values)
    calls = max(counts["answer_calls"], 1)
    row = dict(
        benchmark=task.NAME, metric=task.METRIC, score=result.pop("score"), **result,
        questions=len(docs), answered=len(values), skipped=dict(skipped),
        videos=out["videos"], videos_encoded=counts["videos_encoded"],
        visual_tokens_per_video=ev.num_visual,
        visual_tokens_used_per_video=ev.tokens_used, full_visual_tokens_per_video=ev.full_visual,
        kept_fraction=ev.tokens_used / ev.full_visual, prompt_length=length,
        batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens, seed=seed,
        timing=dict(
            decode_video_s=timing["decode_video_s"], encode_s=timing["encode_s"],
            prefill_s=timing["prefill_s"], decode_s=timing["decode_s"],
            encode_s_per_video=timing["encode_s"] / max(counts["videos_encoded"], 1),
            prefill_s_per_batch=timing["prefill_s"] / calls,
            # First token of a batch whose videos are new: encode + prefill.
            ttft_s_per_batch=(timing["encode_s"] / max(counts["encode_calls"], 1)
                              + timing["prefill_s"] / calls),
            decode_s_per_batch=timing["decode_s"] / calls,
            note="the first call of each step includes compilation"))
    return dict(row=row, samples=samples)


def build(config: Any, checkpoint: str | None, batch_size: int, max_new_tokens: int
          ) -> BenchmarkAnswerer:
    """The model of ``config`` (its pretrained folders, or ``checkpoint``'s params) on the
    first ``prod(config.mesh.shape)`` devices (every device for a -1)."""
    run = Run(config, devices=FIT)
    if checkpoint:
        params = run.restore(checkpoint, params_only=True).params
    else:
        if jax.tree.leaves(run.setup.abstract_state["params"].get("compressor", {})):
            raise ValueError(
                f"compressor {config.compressor.name!r} has learned parameters and no"
                " --checkpoint trained them; pass one, or evaluate the pretrained model"
                " with a training-free compressor (fre_res_frames, uniform_frames,"
                " spatial_pool, temporal_merge, anchors_only, full)")
        with run:
            params = run.init_params()
    engine = Engine(run, params, max_new_tokens=max_new_tokens)
    return BenchmarkAnswerer(engine, batch_size=batch_size or config.eval.batch_size)


def run(config: Any, benchmark: str, data: str, out: str, *, checkpoint: str | None = None,
        batch_size: int = 0, limit: int = 0, seed: int = 0, sampling: str = "linspace",
        resize: str = "stretch", command: str = "") -> dict:
    task = video_benchmarks.get(benchmark)
    docs = task.load(data)
    if limit:
        docs = docs[:limit]
    ev = build(config, checkpoint, batch_size, task.MAX_NEW_TOKENS)
    frames = video_decode.FrameSampling(num_frames=config.data.num_frames,
                                        image_size=config.data.image_size, mode=sampling,
                                        resize=resize)
    result = evaluate_benchmark(ev, task, docs, frames, seed=seed)
    row = dict(result["row"], compressor=config.compressor.name,
               ratio=float(config.compressor.ratio), frames=config.data.num_frames,
               model=config.model.llm.get("pretrained") or checkpoint or "",
               devices=jax.device_count(), mesh=dict(ev.mesh.shape), command=command)
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"{benchmark}__{config.compressor.name}__r{row['ratio']:g}")
    with open(stem + ".json", "w") as f:
        json.dump(row, f, indent=1)
    with open(stem + "_samples.jsonl", "w") as f:
        for s in result["samples"]:
            f.write(json.dumps(video_benchmarks.log_line(s), ensure_ascii=False) + "\n")
    return dict(row=row, samples=result["samples"], report=stem + ".json")


def define_flags() -> None:
    """The command's flags; defined when it runs, so importing this module defines none
    (``frejax.inference.predict`` and this module both take ``--config``)."""
    config_flags.DEFINE_config_file(
        "config", None, "Model config (e.g. configs/llava_onevision.py:llava=<folder>,...).",
        lock_config=True)
    flags.DEFINE_enum("benchmark", None, sorted(video_benchmarks.BENCHMARKS), "The benchmark.")
    flags.DEFINE_string("data", None, "The benchmark's released files on local disk.")
    flags.DEFINE_string("out", "eval_results", "Folder for the report and the samples log.")
    flags.DEFINE_string("checkpoint", None,
                        "A frejax workdir / checkpoint whose params replace the config's.")
    flags.DEFINE_integer("batch_size", 0, "Prompts per step; 0: config.eval.batch_size.")
    flags.DEFINE_integer("limit", 0, "Only the first N questions (0: all).")
    flags.DEFINE_integer("seed", 0, "Seed of the random-option fallbacks of the scorers.")
    flags.DEFINE_enum("sampling", "linspace", video_decode.SAMPLING_MODES,
                      "Frame sampling (lmms-eval: linspace).")
    flags.DEFINE_enum("resize", "stretch", video_decode.RESIZE_MODES,
                      "Frame resizing (LLaVA-OneVision's processor: stretch).")
    flags.mark_flags_as_required(["config", "benchmark", "data"])


def main(argv):
    del argv
    command = "python -m frejax.inference.benchmark_eval " + " ".join(sys.argv[1:])
    f = flags.FLAGS
    out = run(f.config, f.benchmark, f.data, f.out, checkpoint=f.checkpoint,
              batch_size=f.batch_size, limit=f.limit, seed=f.seed, sampling=f.sampling,
              resize=f.resize, command=command)
    row = out["row"]
    print(f"{row['benchmark']} {row['metric']}: {row['score']:.4g} on {row['answered']} of"
          f" {row['questions']} questions; {row['compressor']} {row['visual_tokens_used_per_video']}"
          f" of {row['full_visual_tokens_per_video']} visual tokens per video"
          f" ({100 * row['kept_fraction']:.1f}%)")
    print(f"report: {out['report']}")


if __name__ == "__main__":
    define_flags()
    cli.run(main, "frejax.inference.benchmark_eval")
