r"""Accuracy retained under compression on natural-video QA: ``python -m frejax.natural_qa``.

    python -m frejax.natural_qa --out=docs/natural_qa                    # headline, 2 CPU cores
    python -m frejax.natural_qa --out=docs/natural_qa --part=all         # every method and budget
    python -m frejax.natural_qa --out=/tmp/nqa --scale=accelerator       # larger, same protocol

The field's protocol on real footage with a frozen pretrained encoder:

1. **Benchmark.** ``data_pipelines.natural_video_qa`` plans eight question families on the
   camera-recorded clips (the last clip by name held out for evaluation), probes the size
   of one visual token; frozen DINOv2-S/14 latents of every frame are computed once
   (``frejax.latent_cache``) and standardised per dimension by the training split's
   statistics. Training redraws every temporal example (direction, speed, freeze, order)
   from the training clips' frame latents each time it is read: same question and answer,
   a new stretch of footage.
2. **Ceiling.** Per seed, the model of ``configs/natural_qa.py`` (projector and LLM on the
   latents) trains at full tokens from scratch.
3. **Compressors on the ceiling.** Per method, ratio and seed: *training-free* (the
   ceiling's weights, where the method has no parameters at that budget) and *adapted*
   (the same short adaptation for every method, full tokens included as the control:
   projector and compressor train, the LLM stays frozen).
4. **Report.** Accuracy (overall and per family), % of the same seed's ceiling retained,
   means over seeds with 95% t-intervals, visual tokens used and the compiled forward's
   FLOPs relative to full tokens (XLA's count: compressor, projector, LLM; the cached
   encoder is the same for all).

Evaluation is exact match of the greedy answer, computed in one teacher-forced pass: a
greedy answer equals the reference exactly when the argmax at every answer position (and
the end token after it) equals the reference token, because until the first miss the
greedy prefix is the reference.

Parts (``--part``): ``headline`` = the ceiling, then at 10x every parameter-free baseline
training-free on seed 0 (cheap: evaluation only), which ranks them; then ``fre_res``,
``fre_res_frames``, ``temporal_dct_only`` (Fre-Res's residual track alone), the three
strongest baselines and ``temporal_dct``, training-free (where parameter-free) and
adapted, over every seed. ``all`` = every registry method and the Fre-Res ablations at
8x, 10x and 16x. Every run writes ``<out>_runs/<run>.json`` (the ceilings' weights go to
``--workdir``); a rerun skips finished runs of the same settings, so an interrupted report
resumes, and ``all`` reuses the headline's runs. The report is rewritten after every run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Any

import numpy as np
from absl import app, flags, logging

from frejax.natural_qa_report import (HEADLINE_RATIO, compression_family, summarize,
                                      write_report)

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


@dataclasses.dataclass(frozen=True)
class Method:
    label: str
    name: str                       # registry name
    options: dict = dataclasses.field(default_factory=dict)


def all_methods() -> list[Method]:
    from frejax import compression  # noqa: PLC0415

    out = [Method(n, n) for n in compression.names() if n != "full"]
    return out + [Method(label, "fre_res", opts) for label, opts in ABLATIONS.items()]


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass
class Redraw:
    """Temporal examples drawn afresh from the training clips' cached frame latents: the
    same family and answer, a new window of footage, every time a row is read."""

    footage: list[np.ndarray]   # per training clip: (frames, N, D), standardised
    frames: int
    size: int

    def __call__(self, family: str, answer: int, rng: np.random.Generator) -> np.ndarray:
        from data_pipelines import natural_video_qa as qa  # noqa: PLC0415

        need = self.frames * 4 if family == "speed" else 2 * self.frames
        usable = [v for v, f in enumerate(self.footage) if len(f) >= need]
        video = int(rng.choice(usable))
        ex = qa.plan_one(family, answer, video, len(self.footage[video]), self.frames,
                         self.size, rng)
        return self.footage[video][np.asarray(ex.frames)]


@dataclasses.dataclass
class Examples:
    """One split as model inputs: text arrays per example, latents gathered per batch."""

    latents: np.ndarray      # (E, T, N, D) float16
    text: dict[str, np.ndarray]
    family: np.ndarray       # (E,) int32 index into families
    answer: np.ndarray       # (E,) int32 option index
    families: tuple[str, ...]
    redraw: Redraw | None = None

    def __len__(self) -> int:
        return len(self.family)

    def batch(self, rows: np.ndarray, rng: np.random.Generator | None = None
              ) -> dict[str, np.ndarray]:
        """Model inputs of ``rows``; with ``rng`` and ``redraw``, temporal rows get new
        footage windows (their question and answer unchanged)."""
        from data_pipelines import natural_video_qa as qa  # noqa: PLC0415

        out = {k: v[rows] for k, v in self.text.items()}
        latents = self.latents[rows]
        if self.redraw is not None and rng is not None:
            for j, r in enumerate(rows):
                family = self.families[self.family[r]]
                if family in qa.TEMPORAL_FAMILIES:
                    latents[j] = self.redraw(family, int(self.answer[r]), rng)
        out["latents"] = latents
        out["frame_mask"] = np.ones((len(rows), self.latents.shape[1]), bool)
        return out


def load_examples(folder: str, config, redraw: bool = False
                  ) -> tuple[dict[str, Examples], Any]:
    """Both splits of a latent cache, tokenized by one word tokenizer of their text;
    ``redraw``: training draws temporal examples afresh (``Redraw``)."""
    from data_pipelines import annotations, input_pipeline, tokenizer as tok_lib  # noqa: PLC0415
    from frejax import latent_cache  # noqa: PLC0415

    splits = {s: latent_cache.load(folder, s) for s in ("train", "eval")}
    families = tuple(latent_cache.manifest(folder)["spec"]["families"])
    texts = {}
    for s, split in splits.items():
        texts[s] = []
        for i, ex in enumerate(split.examples):
            question, answer = annotations.render_multiple_choice(
                ex["question"], ex["options"], ex["answer"])
            texts[s].append(dict(question=question, answer=answer, index=i,
                                 family=families.index(ex["family"])))
    template = config.data.prompt_template
    words = [t[k] for split in texts.values() for t in split for k in ("question", "answer")]
    tokenizer = tok_lib.word_tokenizer_for(words, template)
    max_text, max_answer = input_pipeline.text_lengths(
        tokenizer, [t for split in texts.values() for t in split], template)
    features = input_pipeline.VideoQAFeatures(tokenizer, max_text, max_answer, template)
    # Each latent dimension standardised by the training split's statistics (a frozen
    # encoder's features differ in scale by dimension; a linear probe would do the same).
    train = splits["train"].latents
    d = train.shape[-1]
    total, square, count = np.zeros(d), np.zeros(d), 0
    for start in range(0, len(train), 256):
        x = np.asarray(train[start:start + 256], np.float64).reshape(-1, d)
        total, square, count = total + x.sum(0), square + (x * x).sum(0), count + len(x)
    mean = total / count
    scale = np.sqrt(np.maximum(square / count - mean * mean, 1e-12))
    def standardise(x) -> np.ndarray:
        return ((np.asarray(x, np.float32) - mean) / scale).astype(np.float16)

    out = {}
    for s, split in splits.items():
        latents = np.empty(split.latents.shape, np.float16)
        for start in range(0, len(latents), 256):
            x = np.asarray(split.latents[start:start + 256], np.float32)
            latents[start:start + 256] = standardise(x)
        rows = [features.map(dict(t, frame_mask=np.ones(1, bool), latents=np.zeros(0)))
                for t in texts[s]]
        text = {k: np.stack([r[k] for r in rows])
                for k in ("tokens", "text_mask", "prompt_len", "loss_mask")}
        out[s] = Examples(latents, text, np.array([t["family"] for t in texts[s]], np.int32),
                          np.array(["ABCD".index(ex["answer"]) for ex in split.examples],
                                   np.int32), families)
    if redraw:
        info = latent_cache.manifest(folder)
        clips = info["splits"]["train"]["videos"]
        out["train"].redraw = Redraw(
            [standardise(latent_cache.footage_latents(folder, c)) for c in clips],
            int(info["spec"]["frames"]), int(info["spec"]["size"]))
    return out, tokenizer


# ----------------------------------------------------------------------------- runs


def run_config(base, method: Method | None, ratio: float, seed: int, *, steps: int,
               adapt: bool):
    """The base config set for one run (``method`` None: full tokens)."""
    from frejax import config_lib  # noqa: PLC0415

    c = base.copy_and_resolve_references()
    c.seed = int(seed)
    if method is None:
        c.compressor = config_lib.compressor_config("full", ratio=0.0)
    else:
        c.compressor = config_lib.compressor_config(method.name, ratio=float(ratio))
        from frejax import compression  # noqa: PLC0415

        section = compression.get(method.name).section
        if method.options:
            c.compressor[section].update(method.options)
    c.train.num_steps = int(steps)
    if adapt:
        # The same short adaptation for every method: projector and compressor train.
        c.optim.freeze = "llm"
        c.optim.warmup_steps = min(c.optim.warmup_steps, max(1, steps // 10))
    config_lib.validate(c)
    return c


class Runner:
    """Builds, trains and evaluates the model of one config on the cached latents."""

    def __init__(self, config, data: dict[str, Examples], tokenizer):
        import jax  # noqa: PLC0415

        from frejax import sharding, train, train_state  # noqa: PLC0415

        self.config, self.data, self.tokenizer = config, data, tokenizer
        self.mesh = train_state.build_mesh(config)
        self._scope = lambda: _Scope(jax, self.mesh, sharding.axis_rules(config.sharding.rules))
        with self._scope():
            self.setup = train_state.make_setup(config, self.mesh, tokenizer)
            self.batch_sharding = sharding.batch_sharding(self.mesh)
            self.train_step = train.make_train_step(self.setup, config, self.batch_sharding)
        self.graphdef = self.setup.graphdef
        self._forward = None

    def init_state(self, start_params: dict | None = None) -> dict:
        """A fresh state; ``start_params`` (flat ``{path: array}``) replace drawn params of
        the same path and shape (the ceiling's projector and LLM)."""
        import jax  # noqa: PLC0415
        from flax import nnx  # noqa: PLC0415

        from frejax import train_state  # noqa: PLC0415

        with self._scope():
            state = train_state.init_state(self.config, self.setup, self.tokenizer)
            if start_params:
                flat = nnx.traversals.flatten_mapping(state["params"])
                shardings = nnx.traversals.flatten_mapping(
                    self.setup.state_shardings["params"])
                for path, value in flat.items():
                    key = "/".join(map(str, path))
                    if key in start_params and start_params[key].shape == value.shape:
                        flat[path] = jax.device_put(start_params[key].astype(value.dtype),
                                                    shardings[path])
                state["params"] = nnx.traversals.unflatten_mapping(flat)
        return state

    def train(self, state: dict, seed: int, log_every: int = 100,
              eval_every: int = 0) -> tuple[dict, list, list]:
        """Trains ``train.num_steps`` steps on shuffled epochs (seeded). Returns the state,
        ``(step, loss)`` every ``log_every`` steps and ``(step, accuracy)`` every
        ``eval_every`` steps (0: none)."""
        from data_pipelines import datasets as data_lib  # noqa: PLC0415

        train = self.data["train"]
        b = self.config.train.batch_size
        rng = np.random.default_rng(seed)
        order, losses, curve = np.empty(0, int), [], []
        with self._scope():
            for step in range(1, self.config.train.num_steps + 1):
                if len(order) < b:
                    order = np.concatenate([order, rng.permutation(len(train))])
                rows, order = order[:b], order[b:]
                batch = data_lib.to_global(train.batch(rows, rng), self.batch_sharding)
                state, metrics = self.train_step(state, batch)
                if step % log_every == 0 or step == self.config.train.num_steps:
                    loss = float(metrics["loss"])
                    if not math.isfinite(loss):
                        raise FloatingPointError(f"natural_qa: loss {loss} at step {step}")
                    losses.append((step, loss))
                    logging.info("step %d loss %.4f", step, loss)
                if eval_every and step % eval_every == 0:
                    curve.append((step, float(self.evaluate(state["params"]).mean())))
                    logging.info("step %d eval accuracy %.3f", step, curve[-1][1])
        return state, losses, curve

    def evaluate(self, params: dict) -> np.ndarray:
        """Per eval example: 1 when the greedy answer is exactly the reference."""
        import jax  # noqa: PLC0415
        import jax.numpy as jnp  # noqa: PLC0415
        from flax import nnx  # noqa: PLC0415

        from data_pipelines import datasets as data_lib  # noqa: PLC0415

        if self._forward is None:
            def forward(p, batch):
                logits = nnx.merge(self.graphdef, p)(batch)
                hit = jnp.argmax(logits[:, :-1], -1) == batch["tokens"][:, 1:]
                need = batch["loss_mask"][:, :-1] > 0
                return jnp.all(hit | ~need, axis=1)

            self._forward = jax.jit(forward)
        ev = self.data["eval"]
        b = self.config.eval.batch_size
        out = []
        with self._scope():
            for start in range(0, len(ev), b):
                rows = np.arange(start, min(start + b, len(ev)))
                pad = b - len(rows)
                rows_padded = np.concatenate([rows, np.zeros(pad, int)])
                batch = data_lib.to_global(ev.batch(rows_padded), self.batch_sharding)
                out.append(np.asarray(self._forward(params, batch))[:len(rows)])
        return np.concatenate(out).astype(np.int8)

    def flops(self, params: dict) -> dict[str, float]:
        """XLA's FLOP count per example of the eval forward, split into the compressor
        (``encode_video``) and the rest (projector and LLM prefill)."""
        import jax  # noqa: PLC0415
        from flax import nnx  # noqa: PLC0415

        from data_pipelines import datasets as data_lib  # noqa: PLC0415

        def count(fn, batch) -> float:
            cost = jax.jit(fn).lower(params, batch).compile().cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            return float(cost.get("flops", float("nan")))

        ev = self.data["eval"]
        n = self.config.eval.batch_size  # a batch every device takes a part of
        with self._scope():
            batch = data_lib.to_global(ev.batch(np.arange(n) % len(ev)), self.batch_sharding)
            total = count(lambda p, x: nnx.merge(self.graphdef, p)(x), batch) / n
            compressor = count(lambda p, x: nnx.merge(self.graphdef, p).encode_video(x),
                               batch) / n
        return dict(forward=total, compressor=compressor, prefill=total - compressor)


class _Scope:
    """``with jax.set_mesh(mesh), axis_rules(...)`` as one context manager."""

    def __init__(self, jax, mesh, rules_ctx):
        self._mesh_ctx, self._rules_ctx = jax.set_mesh(mesh), rules_ctx

    def __enter__(self):
        self._mesh_ctx.__enter__()
        self._rules_ctx.__enter__()

    def __exit__(self, *exc):
        self._rules_ctx.__exit__(*exc)
        return self._mesh_ctx.__exit__(*exc)


def _flat_params(params: dict) -> dict[str, np.ndarray]:
    from flax import nnx  # noqa: PLC0415

    flat = nnx.traversals.flatten_mapping(params)
    return {"/".join(map(str, k)): np.asarray(v) for k, v in flat.items()}


def _has_params(runner: Runner) -> bool:
    return "compressor" in runner.setup.abstract_state["params"]


# ----------------------------------------------------------------------------- protocol


class Protocol:
    """Runs (or reads back) every run of a part; each run is one JSON file."""

    def __init__(self, out: str, config, data, tokenizer, scale: dict, workdir: str,
                 cache_key: str):
        self.out, self.config, self.data, self.tokenizer = out, config, data, tokenizer
        self.scale = scale
        # Runs of other settings (model, protocol sizes, cache) are never read back.
        self.settings = hashlib.sha1(json.dumps(
            dict(config=config.to_dict(), scale=scale, cache=cache_key), sort_keys=True,
            default=str).encode()).hexdigest()[:12]
        self.runs_dir = out + "_runs"       # one JSON per finished run: the report's data
        self.workdir = workdir              # the ceilings' weights
        os.makedirs(self.runs_dir, exist_ok=True)
        os.makedirs(workdir, exist_ok=True)
        self._flops_cache: dict[str, dict] = {}
        self.on_record = None  # called after every finished run

    def _path(self, run_id: str) -> str:
        return os.path.join(self.runs_dir, run_id.replace("/", "__").replace(":", "-") + ".json")

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

    def _record(self, run_id: str, runner: Runner, params, correct: np.ndarray, seconds: float,
                **extra) -> dict:
        ev = self.data["eval"]
        by_family = {f: float(correct[ev.family == i].mean())
                     for i, f in enumerate(ev.families) if (ev.family == i).any()}
        return self._write(run_id, dict(
            run=run_id, accuracy=float(correct.mean()), accuracy_by_family=by_family,
            correct=correct.tolist(), num_examples=len(correct),
            visual_tokens=runner.setup.num_visual_tokens,
            visual_tokens_used=runner.setup.visual_tokens_used,
            full_visual_tokens=runner.setup.full_visual_tokens,
            flops=self._flops(run_id, runner, params), seconds=round(seconds, 1), **extra))

    def _flops(self, run_id: str, runner: Runner, params) -> dict:
        """FLOPs depend on the method and budget, not on the seed or the weights: counted
        once per method and budget (the seed's part of ``run_id`` dropped)."""
        key = run_id.rsplit("/", 1)[0]
        if key not in self._flops_cache:
            self._flops_cache[key] = runner.flops(params)
        return self._flops_cache[key]

    def ceiling(self, seed: int) -> dict:
        run_id = f"ceiling/seed{seed}"
        weights = os.path.join(self.workdir, f"ceiling_{self.settings}_seed{seed}.npz")
        done = self._done(run_id)
        if done and os.path.isfile(weights):
            return done
        start = time.time()
        cfg = run_config(self.config, None, 0.0, seed, steps=self.config.train.num_steps,
                         adapt=False)
        runner = Runner(cfg, self.data, self.tokenizer)
        state, losses, curve = runner.train(runner.init_state(), seed,
                                            eval_every=max(1, cfg.train.num_steps // 6))
        params = state["params"]
        flat = _flat_params(params)
        np.savez(weights + ".tmp.npz", **flat)
        os.replace(weights + ".tmp.npz", weights)
        correct = runner.evaluate(params)
        logging.info("%s: accuracy %.3f", run_id, correct.mean())
        return self._record(run_id, runner, params, correct, time.time() - start,
                            losses=losses, eval_curve=curve, steps=cfg.train.num_steps)

    def _ceiling_params(self, seed: int) -> dict[str, np.ndarray]:
        self.ceiling(seed)
        with np.load(os.path.join(self.workdir, f"ceiling_{self.settings}_seed{seed}.npz")) as z:
            return {k: z[k] for k in z.files}

    def compressed(self, method: Method | None, ratio: float, seed: int, adapt: bool) -> dict:
        """Training-free (``adapt`` False) or adapted run of ``method`` (None: full tokens)."""
        label = "full" if method is None else method.label
        kind = "adapted" if adapt else "free"
        run_id = f"{kind}/{label}@{ratio:g}x/seed{seed}"
        done = self._done(run_id)
        if done:
            return done
        start = time.time()
        steps = self.scale["adapt_steps"] if adapt else self.config.train.num_steps
        try:
            cfg = run_config(self.config, method, ratio, seed, steps=steps, adapt=adapt)
            runner = Runner(cfg, self.data, self.tokenizer)
        except ValueError as e:  # not buildable at this budget: say so in the report
            return self._write(run_id, dict(run=run_id, unavailable=str(e)))
        if not adapt and _has_params(runner):
            return self._write(run_id, dict(
                run=run_id, unavailable="has parameters at this budget: no training-free run"))
        state = runner.init_state(self._ceiling_params(seed))
        losses = []
        if adapt:
            state, losses, _ = runner.train(state, seed + 10_000, log_every=50)
        correct = runner.evaluate(state["params"])
        logging.info("%s: accuracy %.3f", run_id, correct.mean())
        return self._record(run_id, runner, state["params"], correct, time.time() - start,
                            losses=losses, steps=steps if adapt else 0)

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


# ----------------------------------------------------------------------------- command


def run(out: str, part: str = "headline", scale: str = "cpu", config=None, footage: str = "",
        seeds: int = 0, workdir: str = "workdirs/natural_qa",
        encoder: str = "dinov2_small") -> list[str]:
    """Builds (or reuses) the latent cache, runs the missing runs of ``part``, writes the
    report ``<out>.{md,json}`` and its plot; returns the files written.

    ``encoder``: an ``frejax.analyze.Encoder`` spec (``pixels`` in tests); its grid must
    pool evenly to ``config.model.vision.latent_grid``.
    """
    from configs import natural_qa as natural_qa_config  # noqa: PLC0415
    from data_pipelines import natural_footage, package_assets  # noqa: PLC0415
    from frejax import analyze, latent_cache  # noqa: PLC0415

    if part not in ("headline", "all"):
        raise ValueError(f"--part must be headline or all, got {part!r}")
    if scale not in SCALES:
        raise ValueError(f"--scale must be one of {sorted(SCALES)}, got {scale!r}")
    sizes = dict(SCALES[scale], **({"seeds": seeds} if seeds else {}))
    if config is None:
        arg = "smoke" if scale == "smoke" else f"scale={scale}"
        config = natural_qa_config.get_config(arg)
    start = time.time()
    videos = (analyze.find_videos(footage) if footage else
              natural_footage.install(package_assets.asset_dir("natural_footage")))
    frozen = analyze.Encoder(encoder, config.data.image_size)
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
    folder = latent_cache.build(videos, package_assets.asset_dir("latents"), frozen, spec,
                                log=logging.info)
    cache = latent_cache.manifest(folder)
    if tuple(cache["grid"]) != tuple(config.model.vision.latent_grid) or \
            cache["width"] != config.model.vision.width:
        raise ValueError(f"config.model.vision.latent_grid / width"
                         f" {config.model.vision.latent_grid} / {config.model.vision.width}"
                         f" do not match the cache's"
                         f" {cache['grid']} / {cache['width']}")
    data, tokenizer = load_examples(folder, config, redraw=sizes["redraw"])
    protocol = Protocol(out, config, data, tokenizer, sizes, workdir,
                        os.path.basename(folder))
    families = data["eval"].families
    meta = dict(
        command=f"python -m frejax.natural_qa --out={out}"
                + (f" --part={part}" if part != "headline" else "")
                + (f" --scale={scale}" if scale != "cpu" else ""),
        part=part, families=list(families), seeds=sizes["seeds"],
        frames=config.data.num_frames, grid=cache["grid"],
        full_tokens=config.data.num_frames * int(np.prod(cache["grid"])),
        train_examples=len(data["train"]), eval_examples=len(data["eval"]),
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
    f = flags.FLAGS
    for path in run(f.out, f.part, f.scale, seeds=f.seeds, footage=f.footage,
                    workdir=f.workdir):
        print(path)


if __name__ == "__main__":
    flags.DEFINE_string("out", None, "report path without extension (docs/natural_qa)")
    flags.DEFINE_string("part", "headline", "headline | all")
    flags.DEFINE_string("scale", "cpu", "cpu | accelerator | smoke")
    flags.DEFINE_integer("seeds", 0, "seeds (0: the scale's, 3)")
    flags.DEFINE_string("footage", "", "videos: folders and files, comma-separated (default:"
                        " the camera-recorded clips of data_pipelines.natural_footage)")
    flags.DEFINE_string("workdir", "workdirs/natural_qa", "where the ceilings' weights go")
    flags.mark_flag_as_required("out")
    app.run(main)
