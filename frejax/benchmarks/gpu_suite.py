r"""One-GPU suite: a LLaVA-OneVision-7B-shaped model, full tokens against Fre-Res budgets.

    python -m frejax.benchmarks.gpu_suite                 # on one H100/H200: the real shape
    python -m frejax.benchmarks.gpu_suite --shape=tiny    # anywhere, in seconds (the tests run it)

Random weights, nothing downloaded. The shape (``--shape=llava_ov_7b``): a
SigLIP-So400m-sized encoder, a Qwen2-7B-sized LLM, bfloat16 compute, and
LLaVA-OneVision's 196 visual tokens per frame at full tokens; Fre-Res budgets
are 1/8 and 1/16 of that. LLaVA-OneVision encodes 729 patches (384 px) and
pools them 2 x 2 to 196; frejax has no pooling stage before the compressor, so
here the encoder sees a 14 x 14 grid (196 px) directly: the LLM's work is the
model's, the encoder's about 3.7x less (a small share of TTFT at these lengths).

Per setting, side by side in one process:

  train  one train step of the projector, compressor and LoRA adapters (encoder
         and LLM frozen, as in LLaVA stage 2 with LoRA; a 7B AdamW state does
         not fit one chip), rematerialised layers: median time, XLA's FLOPs,
         MFU against ``--peak_tflops`` (bf16 dense peak of the chip);
  TTFT   encoder + compressor + prefill + first greedy token for 32 and 256
         frames: median time and the compiled program's memory (weights +
         temporaries), next to the paper's H100 figures for LLaVA-OneVision
         (TTFT 7.84 s -> 1.68 s, peak memory 41.68 -> 22.35 GB).

Results merge into ``docs/accelerator_scale.json`` under ``gpu_suite`` (the
Markdown report is rebuilt); ``--out`` writes elsewhere.
"""

from __future__ import annotations

import argparse
import json

import jax
import ml_collections
from flax import nnx

from data_pipelines import datasets as data_lib
from frejax import config_lib
from frejax.benchmarks import accelerator_scale
from frejax.benchmarks.dct_and_compressor import median_seconds, median_step_seconds
from frejax.training import train as train_lib
from frejax.training.run import Run

PAPER_H100 = dict(ttft_full_s=7.84, ttft_fre_res_s=1.68, peak_full_gb=41.68,
                  peak_fre_res_gb=22.35)
# bf16 dense peak FLOP/s by device kind (H100/H200 SXM: 989 TFLOP/s).
PEAK_TFLOPS = {"NVIDIA H100": 989.0, "NVIDIA H200": 989.0}

SHAPES = {
    "llava_ov_7b": dict(
        image_size=196, patch=14,
        vision=dict(width=1152, depth=26, heads=16, mlp_dim=4304),
        llm=dict(vocab_size=152_064, width=3584, depth=28, heads=28, kv_heads=4, head_dim=128,
                 mlp_dim=18_944, rope_theta=1_000_000.0, qkv_bias=True, tie_embeddings=False),
        frames=(32, 256), train_frames=32, lora_rank=16),
    "tiny": dict(
        image_size=32, patch=4,
        vision=dict(width=32, depth=2, heads=2, mlp_dim=64),
        llm=dict(vocab_size=0, width=64, depth=2, heads=4, kv_heads=2, head_dim=0, mlp_dim=128,
                 rope_theta=10_000.0, qkv_bias=True, tie_embeddings=False),
        frames=(16,), train_frames=16, lora_rank=2),
}


def make_config(shape: dict, frames: int, compressor: str, budget: int,
                dtype: str) -> ml_collections.ConfigDict:
    c = config_lib.base_config()
    c.name = "gpu_suite"
    c.data.update(name="synthetic_video_qa", num_frames=frames, image_size=shape["image_size"])
    c.model.vision.update(image_size=shape["image_size"], patch_size=shape["patch"],
                          remat="full", **shape["vision"])
    c.model.llm.update(remat="full", **shape["llm"])
    c.model.llm.lora.rank = shape["lora_rank"]
    c.compressor = config_lib.compressor_config(compressor, ratio=0.0)
    c.compressor.budget = budget
    if compressor == "fre_res":
        c.compressor.fre_res.absorber.heads = 16 if shape["vision"]["width"] % 16 == 0 else 2
    c.optim.update(freeze="encoder,llm", warmup_steps=0)
    c.train.update(batch_size=1, num_steps=10, dtype=dtype)
    c.mesh.shape = (1, 1, 1)
    config_lib.validate(c)
    return c


def measure(config, *, train: bool, repeats: int) -> dict:
    with Run(config, devices=jax.devices()[:1], shape=(1, 1, 1)) as run:
        setup, tokenizer, mesh = run.setup, run.tokenizer, run.mesh
        state = run.init()
        batch_sharding = run.batch_sharding
        batch = data_lib.next_global_batch(
            data_lib.make_train_iterator(config, tokenizer, mesh), batch_sharding)
        graphdef = setup.graphdef
        ttft = jax.jit(lambda p, b: nnx.merge(graphdef, p).generate(b, 1, prefix_len=1))
        compiled = ttft.lower(state["params"], batch).compile()
        memory = compiled.memory_analysis()
        out = dict(visual_tokens=setup.num_visual_tokens,
                   ttft_s=median_seconds(compiled, state["params"], batch, repeats=repeats),
                   ttft_memory_bytes=int(memory.argument_size_in_bytes
                                         + memory.temp_size_in_bytes))
        if train:
            step = train_lib.make_train_step(setup, config, batch_sharding)
            compiled_step = step.lower(state, batch).compile()
            cost = compiled_step.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            out["train_flops"] = float((cost or {}).get("flops", 0.0))
            # The compiled step itself (donating the state): no second compilation.
            out["train_s"] = median_step_seconds(compiled_step, state, batch, repeats=repeats)
    return out


def settings(shape: dict, frames: int) -> list[tuple[str, str, int]]:
    full = frames * (shape["image_size"] // shape["patch"]) ** 2
    return [("full", "full", full),
            ("fre_res 8x", "fre_res", full // 8), ("fre_res 16x", "fre_res", full // 16)]


def run(args) -> dict:
    shape = SHAPES[args.shape]
    device = jax.devices()[0]
    peak = args.peak_tflops or PEAK_TFLOPS.get(device.device_kind, 0.0)
    rows = []
    for frames in shape["frames"]:
        for label, name, budget in settings(shape, frames):
            config = make_config(shape, frames, name, budget, args.dtype)
            r = measure(config, train=frames == shape["train_frames"], repeats=args.repeats)
            r.update(frames=frames, setting=label)
            if "train_s" in r and peak:
                r["mfu"] = r["train_flops"] / r["train_s"] / (peak * 1e12)
            print(json.dumps(r), flush=True)
            rows.append(r)
    return dict(shape=args.shape, device=f"{device.platform} {device.device_kind}",
                dtype=args.dtype, peak_tflops=peak, rows=rows, paper_h100=PAPER_H100,
                markdown=markdown(rows, args, device, peak))


def markdown(rows, args, device, peak) -> list[str]:
    lines = [f"`python -m frejax.benchmarks.gpu_suite --shape={args.shape}` on {device.platform}"
             f" ({device.device_kind}), {args.dtype}, random weights.", "",
             "| frames | setting | visual tokens | TTFT s | TTFT program GB | train step s |"
             " MFU |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        train = f"{r['train_s']:.3f}" if "train_s" in r else "–"
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "–"
        lines.append(f"| {r['frames']} | {r['setting']} | {r['visual_tokens']} |"
                     f" {r['ttft_s']:.3f} | {r['ttft_memory_bytes'] / 1e9:.2f} | {train} |"
                     f" {mfu} |")
    lines += ["", "Paper (LLaVA-OneVision on one H100): TTFT 7.84 s full -> 1.68 s Fre-Res,"
              " peak memory 41.68 -> 22.35 GB."]
    if not peak:
        lines.append("No bf16 peak known for this device: MFU not computed.")
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llava_ov_7b", choices=tuple(SHAPES))
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peak_tflops", type=float, default=0.0,
                   help="the chip's bf16 dense peak (default: known H100/H200 figure)")
    p.add_argument("--out", default=accelerator_scale.DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    report = accelerator_scale.load(args.out)
    report["gpu_suite"] = run(args)
    accelerator_scale.save(args.out, report, ("gpu_suite",))
    return report["gpu_suite"]


if __name__ == "__main__":
    main()
