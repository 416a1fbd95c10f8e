r"""Fre-Res where the paper makes its claim: ``python -m frejax.studies.dense_video``.

    python -m frejax.studies.dense_video --out=docs/dense_video                 # the report
    python -m frejax.studies.dense_video --out=docs/dense_video --part=ceiling  # learnable first
    python -m frejax.studies.dense_video --part=cache                           # the cache only
    python -m frejax.studies.dense_video --out=docs/dense_video_hard --part=ceiling \
        --families=fast_motion,counting --config.model.llm.depth=4    # a diagnosis

Every frame of a 128-frame window at the footage's own rate, answered at a sparse
model's token budget (that of 16 uniform frames at full per-frame tokens, 8x fewer than
every frame), with runs of ``python -m frejax.main``'s loop on cached latents:

1. **Benchmark** (``data_pipelines.dense_video_qa``): brief events, counted events,
   fast movers, the order of two events and a small static detail, composited into
   camera recordings and camera motion over photographs; ``train``, ``select`` and
   ``test`` split by source. Frozen DINOv2-S/14 latents of every frame are cached once
   (``frejax.studies.latent_cache.build_dense``).
2. **Learnable first.** Per seed, the model of ``configs/dense_video.py`` trains on every
   frame and every token (the ceiling). Retention is reported only where the ceiling
   reaches ``LEARNED`` on every family group of the test split on every seed.
3. **Honest selection.** Fre-Res's settings (segments, anchors, coding, coefficients,
   pooling: ``CANDIDATES``; under multimodal RoPE also where its residual-frequency
   tokens sit in time: ``PLACES``) are adapted from seed 0's ceiling and scored on ``select``;
   the best becomes ``fre_res:selected``. Every reported run evaluates ``test``.
4. **The comparison** at the budget, per seed: uniform sparse frames (what
   LLaVA-OneVision does), Fre-Res (default, selected, ablations, ``fre_res_frames``) and
   the strongest baselines over the same dense frames (temporal merging, per-frame
   budgets, temporal DCT, EVS). Each method both *adapted* from the ceiling (the same
   short adaptation: projector and compressor train, the LLM frozen) and *trained from
   scratch* with the ceiling's recipe at its own budget; parameter-free methods also
   *training-free* on the ceiling.
5. **Report** ``<out>.{md,json}`` and ``<out>_groups.png``
   (``frejax.studies.dense_video_report``): per family group, paired per-seed
   differences against uniform frames and the best baseline with 95% intervals, the
   goals, and the cost per method (visual tokens, prefill, compressor and encoder FLOPs).

Runs are seed-major (seed 0's ceiling, the selection, every method of seed 0 training-free
and adapted, then trained from scratch; then the next seed), and stop at a ceiling that
misses a family group. ``fre_res:selected`` is run when the selection chose other than
the default (else ``fre_res`` is the selected one). Each run trains in its own
workdir under
``--workdir``, one JSON per finished run under ``<out>_runs/``; a rerun reads finished
runs back, so the report resumes. It is rewritten after every run.

``--families`` builds and asks some families only (its own cache; the report's groups
shrink to them), to diagnose the families a ceiling misses; ``--config`` (default
``configs/dense_video.py``) and ``--config.<key>=...`` change the model or recipe, and
the report names the command with them.
"""

from __future__ import annotations

import sys
import time

import jax
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from configs import dense_video as dense_video_config
from data_pipelines import dense_video_qa as dense
from data_pipelines import latent_source, package_assets
from frejax import cli, compression, config_lib
from frejax.studies import dense_video_report, frozen_encoder, latent_cache
from frejax.studies.natural_qa import Method, Protocol

# The budget: 16 uniform frames of the 128 at full per-frame tokens.
SPARSE_FRAMES = 16
PAPER = dict(anchor="middle", residual="inter_frame", coding="single")
# Fre-Res settings chosen between on the selection split (label -> compressor.fre_res).
CANDIDATES: dict[str, dict] = {
    "fre_res": {},
    "fre_res:paper": PAPER,
    "fre_res:single": dict(coding="single"),
    "fre_res:pyramid": dict(coding="pyramid"),
    "fre_res:segments16": dict(segment_len=16),
    "fre_res:segments32": dict(segment_len=32),
    "fre_res:paper_pool1": dict(PAPER, pool=1),
}
# Under multimodal RoPE, where Fre-Res's residual-frequency tokens sit in time is a
# setting too (compressor.fre_res.residual_place; docs/qwen_vl.md), chosen the same way.
PLACES: dict[str, dict] = {
    "fre_res:place_anchor": dict(residual_place="anchor"),
    "fre_res:place_spread": dict(residual_place="spread"),
}


def candidates(config) -> dict[str, dict]:
    """The settings the selection chooses between for ``config``'s model: the position
    rules only where positions come from places (1D RoPE ignores them), and none that
    is the same model as one before it (``fingerprint``)."""
    options_of = dict(CANDIDATES, **(PLACES if tuple(config.model.llm.mrope_sections) else {}))
    kept, seen = {}, []
    for label, options in options_of.items():
        mark = fingerprint(config, options)
        if mark is None or not any(_same(mark, other) for other in seen):
            kept[label] = options
            seen.append(mark)
    return kept


def fingerprint(config, options: dict):
    """What Fre-Res with ``options`` is at the study's budget: its parameters, and its
    tokens, mask and places for fixed latents (None where it cannot be built). Two
    settings with equal fingerprints are one model: a setting can restate what a default
    resolves to (``segment_len=16`` at this budget) or reach it another way (anchors at
    the segment mean, placed at the anchor, sit at the segment's centre)."""
    # The study's frames and grid; a narrow width (the settings act on time and space).
    geometry = compression.VideoGeometry(config.data.num_frames,
                                         tuple(config.model.vision.latent_grid), 8)
    budget = compression.resolve_budget(geometry, ratio=ratio(config))
    try:
        model = compression.build("fre_res", geometry, budget, options, rngs=nnx.Rngs(0))
    except ValueError:
        return None
    latents = jax.random.normal(jax.random.key(0), (1, geometry.frames, geometry.tokens,
                                                     geometry.embed))
    out = (nnx.state(model), nnx.jit(lambda m, x: m(x, places=True))(model, latents))
    return jax.tree.structure(out), [np.asarray(x) for x in jax.tree.leaves(out)]


def _same(a, b) -> bool:
    return (a is not None and b is not None and a[0] == b[0]
            and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a[1], b[1])))


BASELINES = ("temporal_merge", "frame_budgets", "temporal_dct", "evs")
REFERENCE = "uniform_frames"
SCALES = {
    # 1,600 training examples per family: with 400, the ceiling fits its training split
    # exactly and does not generalise on counting and fast motion (docs/dense_video.md).
    "cpu": dict(train_per_family=1600, select_per_family=100, test_per_family=200,
                adapt_steps=300, seeds=5),
    "smoke": dict(train_per_family=4, select_per_family=2, test_per_family=2, adapt_steps=2,
                  seeds=2),
}
PARTS = ("cache", "ceiling", "select", "headline")


def methods(selected: dict | None) -> list[Method]:
    """Every compared method, most needed first: uniform frames, Fre-Res as selected (when
    the selection chose other than the default) and as default, the baselines, then
    ``fre_res_frames`` and the ablations."""
    out = [Method(REFERENCE, REFERENCE)]
    if selected:
        out.append(Method("fre_res:selected", "fre_res", selected))
    out.append(Method("fre_res", "fre_res"))
    out += [Method(b, b) for b in BASELINES]
    return out + [Method("fre_res_frames", "fre_res_frames"),
                  Method("fre_res:paper", "fre_res", PAPER),
                  Method("fre_res:no_absorber", "fre_res", dict(absorber=dict(enabled=False))),
                  Method("anchors_only", "anchors_only"),
                  Method("temporal_dct_only", "temporal_dct_only")]


def ratio(config) -> float:
    return config.data.num_frames / SPARSE_FRAMES


# ----------------------------------------------------------------------------- the cache


def spec_for(config, sizes: dict, pool: int,
             families: tuple[str, ...] = dense.FAMILIES) -> latent_cache.DenseSpec:
    # Squares a quarter of the frame, one visual token's cell at the default 2x2 tokens
    # per frame: the benchmark's questions stay the same when a config reads the frames
    # at another grid.
    return latent_cache.DenseSpec(
        frames=config.data.num_frames, size=config.data.image_size, pool=pool,
        probe_side=config.data.image_size // 2,
        train_per_family=sizes["train_per_family"],
        select_per_family=sizes["select_per_family"],
        test_per_family=sizes["test_per_family"], families=tuple(families))


def build_cache(config, sizes: dict, sources: dense.Sources | None = None,
                encoder: str = "dinov2_small",
                families: tuple[str, ...] = dense.FAMILIES) -> tuple[str, float]:
    """The cache of ``config``'s geometry and ``families`` (built once): its folder, and
    the encoder's FLOPs per frame."""
    frozen = frozen_encoder.Encoder(encoder, config.data.image_size)
    grid = tuple(config.model.vision.latent_grid)
    pool = frozen.grid[0] // grid[0]
    if pool < 1 or latent_cache.pooled_grid(frozen.grid, pool) != grid:
        raise ValueError(f"config.model.vision.latent_grid {grid} is not the encoder's grid"
                         f" {tuple(frozen.grid)} pooled by a whole factor")
    folder = latent_cache.build_dense(sources or dense.default_sources(),
                                      package_assets.asset_dir("latents"), frozen,
                                      spec_for(config, sizes, pool, families),
                                      log=logging.info)
    return folder, frozen.flops_per_frame()


# ----------------------------------------------------------------------------- protocol


class Study:
    """The parts in order, over one ``Protocol`` (one JSON per run)."""

    def __init__(self, protocol: Protocol, seeds: int, groups: dict = dense.GROUPS):
        self.p, self.seeds, self.groups = protocol, seeds, groups
        self.r = ratio(protocol.config)

    def ceilings(self) -> None:
        for s in range(self.seeds):
            self.p.ceiling(s)

    def select(self) -> dict:
        """Every candidate adapted from seed 0's ceiling, scored on ``select``; the
        options of the best (the default on a tie)."""
        scores = {}
        options_of = candidates(self.p.config)
        for label, options in options_of.items():
            r = self.p.compressed(Method(label, "fre_res", options), self.r, 0, kind="adapted",
                                  eval_split="select")
            if "accuracy" in r:
                scores[label] = r["accuracy"]
        if not scores:
            raise RuntimeError("dense_video: no Fre-Res candidate is buildable at this budget")
        best = max(scores, key=lambda k: (scores[k], k == "fre_res"))
        return options_of[best]

    def learned(self, seed: int) -> list[str]:
        """The family groups seed's ceiling misses (below ``LEARNED`` on the test split)."""
        record = self.p.ceiling(seed)
        return [g for g, fs in self.groups.items()
                if np.mean([record["accuracy_by_family"][f] for f in fs])
                < dense_video_report.LEARNED]

    def headline(self) -> None:
        """Seed-major: each seed's ceiling, then (after seed 0's) the selection, then every
        method on that seed. Stops at a ceiling that misses a family group: nothing is
        compared on what the full-token model cannot answer."""
        selected = None
        for s in range(self.seeds):
            missed = self.learned(s)
            if missed:
                logging.warning("dense_video: seed %d's ceiling misses %s; stopping (learnable"
                                " first)", s, ", ".join(missed))
                return
            if selected is None:
                selected = self.select()
            # The cheap kinds of every method first, then the long scratch runs.
            for m in methods(selected):
                self.p.compressed(m, self.r, s, kind="free")
                self.p.compressed(m, self.r, s, kind="adapted")
            self.p.compressed(None, self.r, s, kind="adapted")  # the full-token control
            for m in methods(selected):
                self.p.compressed(m, self.r, s, kind="scratch")


def run(out: str, part: str = "headline", scale: str = "cpu", config=None,
        sources: dense.Sources | None = None, seeds: int = 0,
        workdir: str = "workdirs/dense_video", encoder: str = "dinov2_small",
        families: tuple[str, ...] = dense.FAMILIES, command: str = "") -> list[str]:
    """Builds (or reuses) the cache, runs the missing runs of ``part``, writes the report;
    returns the files written (``part=cache``: the cache folder).

    ``families``: a benchmark of some families only (a diagnosis of the ones a ceiling
    misses; the report's groups shrink to them). ``command``: what the report says wrote
    it (default: this call's flags)."""
    families = dense.parse_families(families)
    if part not in PARTS:
        raise ValueError(f"--part must be one of {PARTS}, got {part!r}")
    if scale not in SCALES:
        raise ValueError(f"--scale must be one of {sorted(SCALES)}, got {scale!r}")
    sizes = dict(SCALES[scale], **({"seeds": seeds} if seeds else {}))
    if config is None:
        config = dense_video_config.get_config("smoke" if scale == "smoke" else None)
    start = time.time()
    folder, encoder_flops = build_cache(config, sizes, sources, encoder, families)
    if part == "cache":
        return [folder]
    config = config.copy_and_resolve_references()
    config.data.root = folder
    cache = latent_source.check_config(config)
    # Score every example of the evaluated split: the loop caps evaluation at
    # eval.num_examples, and a split's examples come family by family.
    config.eval.num_examples = max(v["examples"] for s, v in cache["splits"].items()
                                   if s != "train")
    config_lib.validate(config)
    protocol = Protocol(out, config, sizes, workdir)
    groups = dense.groups_of(cache["spec"]["families"])
    study = Study(protocol, sizes["seeds"], groups)
    command = command or (f"python -m frejax.studies.dense_video --out={out}"
                          + (f" --part={part}" if part != "headline" else "")
                          + (f" --scale={scale}" if scale != "cpu" else ""))
    meta = dict(
        command=command, part=part, seeds=sizes["seeds"], ratio=study.r,
        sparse_frames=SPARSE_FRAMES, frames=config.data.num_frames, grid=cache["grid"],
        full_tokens=config.data.num_frames * int(np.prod(cache["grid"])),
        families=list(cache["spec"]["families"]), groups=groups,
        examples={s: v["examples"] for s, v in cache["splits"].items()},
        sources=cache["sources"], skipped=cache["skipped"], spec=cache["spec"],
        encoder=encoder, encoder_flops_per_frame=encoder_flops,
        ceiling_steps=config.train.num_steps, adapt_steps=sizes["adapt_steps"],
        candidates=candidates(config), baselines=list(BASELINES), reference=REFERENCE,
        devices=jax.device_count())

    def report(finished: bool) -> list[str]:
        records = protocol.records()
        return dense_video_report.write_report(out, records, dict(
            meta, seconds=time.time() - start, runs=len(records), finished=finished))

    protocol.on_record = lambda: report(False)
    {"ceiling": study.ceilings, "select": lambda: (study.ceilings(), study.select()),
     "headline": study.headline}[part]()
    return report(True)


def main(argv):
    del argv
    cli.quiet_libraries()
    f = flags.FLAGS
    if f.part != "cache" and not f.out:
        raise app.UsageError("--out is needed (the report path without extension)")
    sources = None
    if f.videos or f.photos or f.test_videos or f.test_photos:
        sources = dense.sources_from_flags(f.videos, f.photos, f.test_videos, f.test_photos)
    command = " ".join(["python -m frejax.studies.dense_video"] + sys.argv[1:])
    for path in run(f.out, f.part, f.scale, config=f.config, sources=sources, seeds=f.seeds,
                    workdir=f.workdir, families=f.families, command=command):
        print(path)


if __name__ == "__main__":
    flags.DEFINE_string("out", None, "report path without extension (docs/dense_video)")
    flags.DEFINE_string("part", "headline", " | ".join(PARTS))
    flags.DEFINE_string("scale", "cpu", " | ".join(SCALES))
    flags.DEFINE_integer("seeds", 0, "seeds (0: the scale's, 5)")
    flags.DEFINE_string("videos", "", "training-side videos (default: the registries' clips)")
    flags.DEFINE_string("photos", "", "training-side photographs")
    flags.DEFINE_string("test_videos", "", "test-side videos")
    flags.DEFINE_string("test_photos", "", "test-side photographs")
    flags.DEFINE_string("workdir", "workdirs/dense_video", "where every run trains")
    flags.DEFINE_string("families", ",".join(dense.FAMILIES),
                        "the families to build and ask (a subset diagnoses a ceiling's misses)")
    config_flags.DEFINE_config_file(
        "config", None, "the model (default configs/dense_video.py; --config.<key>=... sets"
        " one field, e.g. --config.model.llm.depth=4)", lock_config=True)
    cli.run(main, "frejax.studies.dense_video")
