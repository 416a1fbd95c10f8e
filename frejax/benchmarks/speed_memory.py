"""Speed and memory of full visual tokens against Fre-Res budgets, side by side in one process.

For one model and one batch of the embedded benchmark, each compiled once:

  prefill  the LLM forward pass over the spliced prompt, visual tokens given;
  TTFT     time to first token: encoder, compressor, prefill and the first
           greedy token (``VideoMLLM.generate(batch, 1, prefix_len=1)``);
  train    one train step (forward, backward, AdamW), the state donated.

Times are wall-clock medians after a warm-up, with ``block_until_ready``; next
to them, XLA's FLOPs (cost analysis) and temporary memory (memory analysis) of
each compiled program, the ratio full / Fre-Res beside the token ratio, and the
train step's MFU against this machine's measured float32 matmul peak.
Targets at 8x: prefill at least 6x faster, train step at least 3x faster.

    python -m frejax.benchmarks.speed_memory                       # an LLM-dominated model
    python -m frejax.benchmarks.speed_memory --llm_width=128 --llm_depth=2 --llm_mlp=256  # the main job's

The default LLM (width 512, depth 8) is larger than the main job's so that, as
in real video MLLMs, the LLM and not the per-frame encoder dominates the cost.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from configs import long_video
from data_pipelines import datasets as data_lib
from frejax import config_lib
from frejax.benchmarks.dct_and_compressor import median_seconds, median_step_seconds
from frejax.training import train
from frejax.training.run import Run


def compiled_figures(fn, *args) -> tuple[float, float]:
    """(FLOPs, temporary bytes) of ``fn``'s compiled program for ``args``."""
    compiled = fn.lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)), float(compiled.memory_analysis().temp_size_in_bytes)


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matmul FLOP/s of this machine (the MFU denominator)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    seconds = median_seconds(jax.jit(jnp.matmul), a, a, repeats=repeats)
    return 2 * n ** 3 / seconds


def measure(config, repeats: int) -> dict:
    with Run(config, devices=jax.devices()[:1], shape=(1, 1, 1)) as run:
        tokenizer, setup, mesh = run.tokenizer, run.setup, run.mesh
        state = run.init()
        batch_sharding = run.batch_sharding
        batch = data_lib.next_global_batch(
            data_lib.make_train_iterator(config, tokenizer, mesh), batch_sharding)
        graphdef, params = setup.graphdef, state["params"]
        encode = jax.jit(lambda p, b: nnx.merge(graphdef, p).encode_video(b))
        prefill = jax.jit(lambda p, b, visual: nnx.merge(graphdef, p)(b, visual))
        ttft = jax.jit(lambda p, b: nnx.merge(graphdef, p).generate(b, 1, prefix_len=1))
        visual = encode(params, batch)
        out = dict(tokens=setup.num_visual_tokens, full=setup.full_visual_tokens)
        out["prefill_s"] = median_seconds(prefill, params, batch, visual, repeats=repeats)
        out["prefill_flops"], out["prefill_temp"] = compiled_figures(prefill, params, batch, visual)
        out["ttft_s"] = median_seconds(ttft, params, batch, repeats=repeats)
        step = train.make_train_step(setup, config, batch_sharding)
        out["train_flops"], out["train_temp"] = compiled_figures(step, state, batch)
        out["train_s"] = median_step_seconds(step, state, batch, repeats=repeats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratios", default="2,4,8,16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--llm_width", type=int, default=512)
    parser.add_argument("--llm_depth", type=int, default=8)
    parser.add_argument("--llm_mlp", type=int, default=1536)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    def config_for(name: str, ratio: float):
        c = long_video.get_config(f"compressor={name},ratio={ratio}")
        c.model.llm.update(width=args.llm_width, depth=args.llm_depth, mlp_dim=args.llm_mlp,
                           heads=8, kv_heads=4)
        c.train.batch_size = args.batch
        c.optim.warmup_steps = 0
        config_lib.validate(c)
        return c

    peak = matmul_peak()
    print(f"{jax.devices()[0].platform}, {jax.device_count()} device(s); float32 matmul peak"
          f" {peak / 1e9:.1f} GFLOP/s; long_video clips (32 frames), batch {args.batch}, LLM"
          f" width {args.llm_width} x {args.llm_depth} layers")
    rows = [("full", 0.0)] + [("fre_res", float(r)) for r in args.ratios.split(",")]
    results = [(name, measure(config_for(name, ratio), args.repeats)) for name, ratio in rows]
    base = results[0][1]
    print(f"{'method':<8} {'tokens':>6} {'fewer':>6} | {'prefill ms':>16} | {'TTFT ms':>16} |"
          f" {'train step ms':>16} | {'train GFLOP':>11} {'temp MiB':>9} {'MFU':>6}")
    for name, r in results:
        def cell(key):
            return f"{r[key] * 1e3:8.1f} ({base[key] / r[key]:4.1f}x)"
        mfu = r["train_flops"] / r["train_s"] / peak
        print(f"{name:<8} {r['tokens']:>6} {r['full'] / r['tokens']:>5.1f}x | {cell('prefill_s')} |"
              f" {cell('ttft_s')} | {cell('train_s')} | {r['train_flops'] / 1e9:>11.1f}"
              f" {r['train_temp'] / 2**20:>9.1f} {100 * mfu:>5.1f}%")
    print("(x): full / this row. Targets at 8x: prefill >= 6x, train step >= 3x.")


if __name__ == "__main__":
    main()
