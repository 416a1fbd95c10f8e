r"""Time to first token and peak memory for a one-minute 30 fps video: every frame, or 32.

    python -m frejax.benchmarks.dense_ttft --out=docs/dense_ttft
    python -m frejax.benchmarks.dense_ttft --out=docs/dense_ttft_llava_ov --llm=qwen2_0_5b \
        --methods=full,fre_res --repeats=1 --peak_memory

The cost side of ``frejax.studies.dense_video``, side by side in one process on the
study's model (``configs/dense_video.py``: frozen DINOv2-S/14 at 112 px, latents
averaged to 2 x 2 per frame, the study's LLM):

* ``dense/<method>``: all ``--seconds * --fps`` frames (1,800) through the encoder in
  chunks of the model's 128-frame clip, each chunk compressed at the study's ratio as it
  comes (``frejax.inference.streaming``'s order: a chunk's tokens, then the next), then
  one prefill of every chunk's tokens and the question, which yields the first token;
* ``dense/full``: the same frames at full per-frame tokens (``--methods`` holds ``full``);
* ``sparse32``: 32 uniform frames at full per-frame tokens (LLaVA-OneVision's sampling),
  the same encoder, no compressor, one prefill.

``--llm=qwen2_0_5b`` swaps the study's LLM for one of LLaVA-OneVision-0.5B's shape
(Qwen2-0.5B: width 896, 24 layers, 14 query over 2 key/value heads, MLP 4,864, 1D RoPE),
random weights, float32: the size of a LLaVA-OneVision LLM that prefills thousands of
tokens on 2 CPU cores. The encoder stays the study's DINOv2-S/14 (LLaVA-OneVision's
is SigLIP-So400m at 384 px, 25x the work per frame): named in the report.

``--peak_memory`` runs every path in a process of its own and reports that process's
peak resident memory (``ru_maxrss``: measured, not computed from shapes; it includes
the Python runtime and the compiled programs, the same for every path), and the
encoder's share of the time to first token. A path holds one model's weights at a time:
the model that compresses the chunks is freed before the one that prefills them all is
built.

Time to first token = encoder + compressor + prefill. Frames are random pixels held in
memory: decoding is left out of both paths (a sparse reader seeks to 32 frames, a
dense one decodes every frame; ``frejax.benchmarks.data_throughput`` measures decoding).
Weights are random: the time of a forward does not depend on them. Each stage is the
median of ``--repeats`` timed runs after one untimed run (compilation excluded).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from configs import dense_video as dense_video_config
from data_pipelines import dense_video_qa as dense
from data_pipelines import tokenizer as tokenizer_lib
from frejax import cli, config_lib, reporting
from frejax.compression import CompressedTokens, concat_chunks
from frejax.inference.engine import Engine
from frejax.studies import dense_video, frozen_encoder, latent_cache
from frejax.training.run import FIT, Run

QUESTION = "How many times does the square flash?"


def benchmark_tokenizer(config):
    """The words of the dense-video questions and answers (the study's vocabulary)."""
    words = {w for text, options in dense.QUESTIONS.values() for t in [text, *options]
             for w in tokenizer_lib.split_words(t)} | set("abcd")
    return tokenizer_lib.word_tokenizer_for(sorted(words), config.data.prompt_template)


# LLMs the prefill runs on: the study's, or LLaVA-OneVision-0.5B's (Qwen2-0.5B) shape.
LLMS = {
    "study": {},
    "qwen2_0_5b": dict(width=896, depth=24, heads=14, kv_heads=2, head_dim=0, mlp_dim=4864,
                       qkv_bias=True, rope_theta=1_000_000.0, tie_embeddings=True,
                       mrope_sections=(), mrope_interleaved=False),
}


def _engine(config, frames: int, method: str, ratio: float) -> Engine:
    c = config.copy_and_resolve_references()
    c.data.update(num_frames=frames, root="(no cache: the benchmark's own words)")
    c.compressor = config_lib.compressor_config(method, ratio=0.0 if method == "full" else ratio)
    # One video at a time: the data axis of size 1 (as predict runs).
    run = Run(c, devices=FIT, shape=(1, *c.mesh.shape[1:]), tokenizer=benchmark_tokenizer(c))
    return Engine(run, run.init_params(), max_new_tokens=1)


def _first_token(engine: Engine, visual: CompressedTokens, repeats: int) -> float:
    """Seconds of both prefills (video, then the question), which give the first token."""
    tok = engine.tokenizer
    ids = [tok.bos_id] + tok.encode(tokenizer_lib.format_prompt(
        QUESTION, template=engine.config.data.prompt_template))
    p = ids.index(tok.video_id)
    before, after = ids[:p], ids[p + 1:]
    max_len = len(before) + engine.num_visual + len(after) + 2
    prefix = jnp.asarray([before], jnp.int32)
    rest = jnp.asarray([after], jnp.int32)
    length = jnp.asarray([len(after)], jnp.int32)
    _, seconds = reporting.timed_median(lambda: engine.call(
        engine.prefill, visual, prefix, rest, length, max_len=max_len)[0], repeats)
    return seconds


def measure(config, encoder: frozen_encoder.Encoder, *, seconds: float, fps: float,
            methods: list[str], repeats: int, log=print, sparse: bool = True) -> dict:
    """Every dense method of ``methods`` (``full``: no compressor) and, if ``sparse``, the
    32-frame path; rows of encoder, compressor and prefill seconds."""
    chunk = config.data.num_frames
    total = int(round(seconds * fps))
    chunks = -(-total // chunk)
    size, grid = config.data.image_size, tuple(config.model.vision.latent_grid)
    pool = encoder.grid[0] // grid[0]
    frames = np.random.default_rng(0).integers(0, 256, (total, size, size, 3), np.uint8)

    def encode(x):
        return latent_cache.pool_latents(encoder(x), encoder.grid, pool, "area")

    # The encoder over every frame (if a dense path runs), and over 32 uniform ones.
    sparse_idx = ((np.arange(32) + 0.5) * total / 32).astype(int)
    sparse_latents, sparse_encoder = reporting.timed_median(
        lambda: encode(frames[sparse_idx]), repeats)
    if methods:
        dense_latents, dense_encoder = reporting.timed_median(lambda: encode(frames), repeats)
        log(f"dense_ttft: encoder {total} frames {dense_encoder:.2f} s")
    else:
        dense_latents, dense_encoder = sparse_latents, 0.0
    log(f"dense_ttft: encoder 32 frames {sparse_encoder:.3f} s")
    config = config.copy_and_resolve_references()
    config.model.vision.width = int(dense_latents.shape[-1])  # the encoder's latent width
    padded = np.zeros((chunks * chunk,) + dense_latents.shape[1:], np.float32)
    padded[:len(dense_latents)] = dense_latents  # (the 32 sparse ones when no dense path runs)
    mask = np.arange(chunks * chunk) < total
    ratio = dense_video.ratio(config)
    rows = {}
    long_engine = None

    def compress_all(engine):
        outs = [engine.call(engine.compress, jnp.asarray(padded[None, k * chunk:(k + 1) * chunk]),
                            jnp.asarray(mask[None, k * chunk:(k + 1) * chunk]))[0]
                for k in range(chunks)]
        return concat_chunks(outs, chunk)

    for method in methods:
        engine = _engine(config, chunk, method, ratio)
        visual, compress_s = reporting.timed_median(lambda: compress_all(engine), repeats)
        # One model at a time, as a serving system holds one: the chunk model's weights go
        # before the long model's are made, so a path's peak memory counts one copy.
        del engine
        gc.collect()
        if long_engine is None or long_engine.num_visual != visual.tokens.shape[1]:
            long_engine = None
            gc.collect()
            # The LLM over every chunk's tokens: the model built for chunks * chunk frames.
            long_engine = _engine(config, chunks * chunk, method, ratio)
            if long_engine.num_visual != visual.tokens.shape[1]:
                raise RuntimeError(f"dense_ttft: {method}: {chunks} chunks give"
                                   f" {visual.tokens.shape[1]} tokens, the long model takes"
                                   f" {long_engine.num_visual}")
            prefill_s = _first_token(long_engine, visual, repeats)
        rows[f"dense/{method}"] = dict(
            frames_encoded=total, visual_tokens=int(visual.tokens.shape[1]),
            encoder_s=dense_encoder, compressor_s=compress_s, prefill_s=prefill_s,
            ttft_s=dense_encoder + compress_s + prefill_s)
        log(f"dense_ttft: {method}: compressor {compress_s:.3f} s, prefill {prefill_s:.3f} s")
    if not sparse:
        return dict(frames=total, chunk=chunk, chunks=chunks, ratio=ratio, rows=rows)
    engine = _engine(config, 32, "full", 0.0)
    # The full compressor is the identity (with the tokens' places under multimodal RoPE):
    # its projection happens in the prefill.
    visual = engine.call(engine.compress, jnp.asarray(sparse_latents[None], jnp.float32),
                         jnp.ones((1, sparse_latents.shape[0]), bool))[0]
    prefill_s = _first_token(engine, visual, repeats)
    rows["sparse32"] = dict(frames_encoded=32, visual_tokens=int(visual.tokens.shape[1]),
                            encoder_s=sparse_encoder, compressor_s=0.0, prefill_s=prefill_s,
                            ttft_s=sparse_encoder + prefill_s)
    return dict(frames=total, chunk=chunk, chunks=chunks, ratio=ratio, rows=rows)


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports ``ru_maxrss`` in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def measure_in_processes(argv: list[str], methods: list[str], log=print) -> dict:
    """``measure`` once per path, each in a fresh process, so each path's peak memory is
    its own: the command again with ``--path``; every process prints its result last."""
    result = None
    for path in [*methods, "sparse32"]:
        cmd = [sys.executable, "-m", "frejax.benchmarks.dense_ttft", *argv, f"--path={path}"]
        log("dense_ttft: " + " ".join(cmd[2:]))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"dense_ttft --path={path} failed:\n{proc.stderr[-3000:]}")
        part = json.loads(proc.stdout.strip().splitlines()[-1])
        if result is None:
            result = dict(part, rows={})
        result["rows"].update(part["rows"])
    return result


def add_ratios(result: dict) -> dict:
    """Each row's time to first token against sparse32 and every row's time and peak memory
    against dense/full (the paper's two ratios), and the encoder's share of the time."""
    rows = result["rows"]
    full = rows.get("dense/full")
    for row in rows.values():
        row["encoder_share"] = row["encoder_s"] / row["ttft_s"]
        if "sparse32" in rows:
            row["ttft_vs_sparse32"] = row["ttft_s"] / rows["sparse32"]["ttft_s"]
        if full:
            row["full_ttft_over_this"] = full["ttft_s"] / row["ttft_s"]
            if "peak_rss_bytes" in row and "peak_rss_bytes" in full:
                row["full_memory_over_this"] = full["peak_rss_bytes"] / row["peak_rss_bytes"]
    return result


# The paper's one-minute 30 fps figures on one H100 (full tokens -> Fre-Res).
PAPER = dict(ttft=7.84 / 1.68, memory=41.68 / 22.35)


def write(out: str, result: dict, meta: dict) -> list[str]:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(dict(meta=meta, **result), f, indent=1)
    rows = result["rows"]
    memory = all("peak_rss_bytes" in r for r in rows.values())
    full = "dense/full" in rows
    lines = [
        f"# Time to first token: {meta['seconds']:g} s of {meta['fps']:g} fps video, dense or"
        " sparse",
        "",
        f"Written by `{meta['command']}` on {meta['device']}, {meta['cpu_count']} cores"
        f" (revision {meta['revision']}). {result['frames']} frames of {meta['size']} px"
        f" through {meta['encoder']} in {result['chunks']} chunks of {result['chunk']};"
        f" LLM: {meta['llm']}; dense methods at {result['ratio']:g}x; medians of"
        f" {meta['repeats']} runs; decoding excluded."
        + (" Peak memory: each path's own process, `ru_maxrss`." if memory else ""),
        "",
        "| path | frames encoded | visual tokens | encoder s | compressor s | prefill s |"
        " time to first token s | encoder share | vs sparse32 |"
        + (" peak memory GiB |" if memory else "")
        + (" TTFT full / this | memory full / this |" if full else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if memory else "")
        + ("---|---|" if full else ""),
    ]
    for name, r in rows.items():
        line = (f"| {name} | {r['frames_encoded']} | {r['visual_tokens']} |"
                f" {r['encoder_s']:.3f} | {r['compressor_s']:.3f} | {r['prefill_s']:.3f} |"
                f" {r['ttft_s']:.3f} | {r['encoder_share']:.0%} |"
                f" {r.get('ttft_vs_sparse32', float('nan')):.1f}x |")
        if memory:
            line += f" {r['peak_rss_bytes'] / 2**30:.2f} |"
        if full:
            line += (f" {r['full_ttft_over_this']:.2f}x |"
                     + (f" {r['full_memory_over_this']:.2f}x |" if memory else " – |"))
        lines.append(line)
    if full:
        lines += ["", f"The paper, one minute of 30 fps video on one H100, full tokens against"
                  f" Fre-Res: time to first token 7.84 -> 1.68 s ({PAPER['ttft']:.2f}x), peak"
                  f" memory 41.68 -> 22.35 GB ({PAPER['memory']:.2f}x)."]
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return [out + ".json", out + ".md"]


def main(argv):
    del argv
    cli.quiet_libraries()
    f = flags.FLAGS
    config = dense_video_config.get_config()
    config.model.llm.update(LLMS[f.llm])
    if f.peak_memory and not f.path:
        forwarded = [a for a in sys.argv[1:] if not a.startswith("--peak_memory")]
        result = measure_in_processes(forwarded, f.methods)
    else:
        encoder = frozen_encoder.Encoder(f.encoder, config.data.image_size)
        methods = f.methods if not f.path else [m for m in f.methods
                                                  if f.path in (m, f"dense/{m}")]
        result = measure(config, encoder, seconds=f.seconds, fps=f.fps, methods=methods,
                         repeats=f.repeats, sparse=f.path in ("", "sparse32"),
                         log=lambda m: print(m, file=sys.stderr))
        if f.path:  # one path of measure_in_processes: its row and this process's peak
            for row in result["rows"].values():
                row["peak_rss_bytes"] = peak_rss_bytes()
            print(json.dumps(result))
            return
    add_ratios(result)
    flags_set = "".join(
        f" --{n}={f[n].value if n != 'methods' else ','.join(f.methods)}"
        for n in ("seconds", "fps", "methods", "repeats", "encoder", "llm", "peak_memory")
        if not f[n].using_default_value)
    encoder_name = {"dinov2_small": "DINOv2-S/14 (pretrained, ONNX)"}.get(f.encoder, f.encoder)
    llm_name = {"study": "the dense-video study's (width 128, 2 layers)",
                "qwen2_0_5b": "Qwen2-0.5B-shaped, as LLaVA-OneVision-0.5B's (random weights,"
                              " float32)"}[f.llm]
    meta = dict(command=f"python -m frejax.benchmarks.dense_ttft --out={f.out}{flags_set}",
                seconds=f.seconds, fps=f.fps,
                device=jax.devices()[0].device_kind, revision=reporting.git_rev(),
                size=config.data.image_size, repeats=f.repeats, encoder=encoder_name,
                llm=llm_name, cpu_count=os.cpu_count())
    for path in write(f.out, result, meta):
        print(path)


if __name__ == "__main__":
    flags.DEFINE_string("out", None, "report path without extension (docs/dense_ttft)")
    flags.DEFINE_float("seconds", 60.0, "video length in seconds")
    flags.DEFINE_float("fps", 30.0, "frame rate")
    flags.DEFINE_list("methods", ["fre_res", "evs", "temporal_merge", "frame_budgets",
                                  "temporal_dct", "fre_res_frames"],
                      "dense methods (full: every frame at full tokens)")
    flags.DEFINE_integer("repeats", 3, "timed runs per stage (median)")
    flags.DEFINE_string("encoder", "dinov2_small", "frozen encoder (dinov2_small | pixels)")
    flags.DEFINE_enum("llm", "study", list(LLMS), "the LLM's shape")
    flags.DEFINE_bool("peak_memory", False, "each path in its own process, with its peak memory")
    flags.DEFINE_string("path", "", "internal: measure this one path (dense/<method> or"
                        " sparse32) and print its row as JSON")
    flags.mark_flag_as_required("out")
    cli.run(main, "frejax.benchmarks.dense_ttft")
