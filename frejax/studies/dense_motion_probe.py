r"""Model-free and model-light: what the dense-video latents carry of the hard families.

    python -m frejax.studies.dense_motion_probe --out=docs/dense_motion_probe

Builds (once) the dense-video latent cache of ``configs/dense_video.py`` holding only
``--families`` (by default the two a ceiling missed: ``fast_motion`` and ``counting``; the
same cache ``frejax.studies.dense_video --families=...`` trains on) and decodes each
question's answer from the latents three ways:

* **timed** (``fast_motion`` only): told which frames the square crosses in, the energy
  of each cell's change from the frames around the crossing, weighted by time, gives the
  moment each cell lights; the square moves from the cells that light first to those
  that light last.
* **lagged** (``fast_motion`` only): not told when, a softmax regression reads the lagged
  products of the left/right and top/bottom cells' change energy (camera motion's floor
  removed), fitted on ``train`` and scored on ``test``.
* **network** (every family): not told when, a small temporal convolution network over
  every frame's tokens (a linear map per token, two convolutions over time, max and
  mean over time), trained on ``train`` with the epoch chosen on ``select``, scored on
  ``test``, over ``--seeds`` seeds.

The network is a reader built for the question, far smaller than the ceiling's LLM: where
it answers on held-out sources and the LLM does not, the tokens hold the answer and the
LLM's reading is what misses; where it fails too, the tokens do not hold it. Written to
``<out>.{md,json}`` with the command.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from flax import nnx

from configs import dense_video as dense_video_config
from data_pipelines import dense_video_qa as dense
from data_pipelines import latent_source
from frejax import cli
from frejax.studies import dense_video

OPTIONS = "ABCD"              # left, right, up, down
LAGS = range(-8, 9)           # frames between the two halves' changes


def halves(tokens: int) -> dict[str, np.ndarray]:
    """The left, right, top and bottom halves of a square, row-major grid of ``tokens``
    cells, as boolean masks over the cells."""
    g = int(round(np.sqrt(tokens)))
    if g * g != tokens or g % 2:
        raise ValueError(f"dense_motion_probe: {tokens} tokens per frame are no even square grid")
    row, col = np.divmod(np.arange(tokens), g)
    return dict(left=col < g // 2, right=col >= g // 2, top=row < g // 2, bottom=row >= g // 2)


def _change(latents: np.ndarray) -> np.ndarray:
    """``(T, N, D)`` latents -> ``(T - 1, N)`` frame-to-frame change energy per cell."""
    return np.linalg.norm(np.diff(latents.astype(np.float32), axis=0), axis=-1)


def _direction(first: dict[str, float]) -> int:
    """Moments the halves light (``left``, ``right``, ``top``, ``bottom``) -> the answer."""
    across, down = first["left"] - first["right"], first["top"] - first["bottom"]
    if abs(across) > abs(down):
        return 1 if across < 0 else 0            # left lit first: moving right
    return 3 if down < 0 else 2


def timed(latents: np.ndarray, frames: list[int]) -> int:
    """The answer from the cells' change energy during the crossing ``frames``: each
    half's moment is the time its cells' energy is centred on."""
    a, b = frames[0], frames[-1]
    t = latents.shape[0]
    around = [k for k in range(max(0, a - 3), min(t, b + 4)) if not a <= k <= b] or [0]
    base = latents[around].astype(np.float32).mean(0)
    energy = np.linalg.norm(latents[a:b + 1].astype(np.float32) - base, axis=-1)   # (k, N)
    time = np.arange(len(energy))[:, None]
    return _direction({name: float((energy[:, m] * time).sum() / (energy[:, m].sum() + 1e-6))
                       for name, m in halves(latents.shape[1]).items()})


def lagged_features(latents: np.ndarray) -> np.ndarray:
    """Peak lagged products of the halves' change energy, camera motion's floor removed."""
    change = _change(latents)
    change = np.maximum(change - np.median(change, axis=0), 0)
    h = {name: change[:, m].sum(1) for name, m in halves(latents.shape[1]).items()}
    out = []
    for a, b in ((h["left"], h["right"]), (h["top"], h["bottom"])):
        n = len(a)
        for lag in LAGS:
            lo, hi = max(0, lag), n + min(0, lag)
            out.append(float(np.max(a[lo:hi] * b[lo - lag:hi - lag])))
    out = np.asarray(out)
    return out / (np.abs(out).max() + 1e-6)


def softmax_regression(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 3000,
                       lr: float = 0.5) -> np.ndarray:
    """Multinomial logistic regression by full-batch gradient descent -> weights."""
    x = np.c_[x, np.ones(len(x))]
    w = np.zeros((x.shape[1], len(OPTIONS)))
    for _ in range(steps):
        z = x @ w
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        w -= lr * (x.T @ p / len(y) + l2 * w)
    return w


def _questions(data, family: str) -> tuple[list[int], np.ndarray]:
    """A split's examples of ``family``: their indices and answers (option indices)."""
    idx = [i for i, e in enumerate(data.examples) if e["family"] == family]
    return idx, np.asarray([OPTIONS.index(data.examples[i]["answer"]) for i in idx])


# ----------------------------------------------------------------------------- the network


class TemporalNet(nnx.Module):
    """Tokens ``(B, T, N, D)`` -> answer logits: a linear map per token, two convolutions
    over time across the frame's N tokens, max and mean over time (a flash, a crossing
    and a count are all local in time; a count is a mean of flashes)."""

    def __init__(self, width: int, tokens: int, classes: int, *, rngs: nnx.Rngs,
                 hidden: int = 32, channels: int = 64, kernel: int = 5):
        self.embed = nnx.Linear(width, hidden, rngs=rngs)
        self.conv1 = nnx.Conv(tokens * hidden, channels, kernel_size=(kernel,), rngs=rngs)
        self.conv2 = nnx.Conv(channels, channels, kernel_size=(kernel,), rngs=rngs)
        self.head = nnx.Linear(2 * channels, classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.gelu(self.embed(x))
        h = h.reshape(*h.shape[:2], -1)
        h = jax.nn.gelu(self.conv2(jax.nn.gelu(self.conv1(h))))
        return self.head(jnp.concatenate([h.max(1), h.mean(1)], axis=-1))


def feature_moments(x: np.ndarray, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation of ``(E, ..., D)`` float16 latents, a chunk
    of examples at a time (a float32 copy of the whole split may not fit)."""
    total = np.zeros(x.shape[-1]), np.zeros(x.shape[-1])
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk].reshape(-1, x.shape[-1]).astype(np.float64)
        total = total[0] + part.sum(0), total[1] + (part * part).sum(0)
    n = x[..., 0].size
    mean = total[0] / n
    std = np.sqrt(np.maximum(total[1] / n - mean * mean, 0)) + 1e-6
    return mean.astype(np.float32), std.astype(np.float32)


def train_network(splits: dict[str, tuple[np.ndarray, np.ndarray]], classes: int, seed: int,
                  epochs: int = 30, batch: int = 64, lr: float = 1e-3) -> dict:
    """Trains a ``TemporalNet`` on ``splits["train"]`` (latents, answers); the epoch with
    the best ``select`` accuracy is the one scored on every split."""
    x_train, y_train = splits["train"]
    mean, std = feature_moments(x_train)
    model = TemporalNet(x_train.shape[-1], x_train.shape[-2], classes, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model)
    tx = optax.adamw(lr, weight_decay=1e-2)
    opt = tx.init(params)

    def logits(p, x):
        return nnx.merge(graphdef, p)((x.astype(jnp.float32) - mean) / std)

    @jax.jit
    def step(p, o, x, y):
        loss, g = jax.value_and_grad(
            lambda p: optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y).mean())(p)
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), o, loss

    predict = jax.jit(lambda p, x: logits(p, x).argmax(-1))

    def accuracy(p, split):
        x, y = splits[split]
        got = np.concatenate([np.asarray(predict(p, x[i:i + 256])) for i in range(0, len(x), 256)])
        return float(np.mean(got == y))

    rng = np.random.default_rng(seed)
    best = None
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x_train))
        for i in range(0, len(order) - batch + 1, batch):
            take = np.sort(order[i:i + batch])
            params, opt, _ = step(params, opt, x_train[take], y_train[take])
        score = accuracy(params, "select")
        if best is None or score > best[0]:
            best = (score, epoch, {s: accuracy(params, s) for s in splits})
    return dict(epoch=best[1], accuracy=best[2])


# ----------------------------------------------------------------------------- measures


def measure(folder: str, families: tuple[str, ...], seeds: int) -> dict:
    data = {split: latent_source.load(folder, split) for split in dense.SPLITS}
    out = {}
    for family in families:
        picked = {s: _questions(d, family) for s, d in data.items()}
        if not all(len(idx) for idx, _ in picked.values()):
            raise ValueError(f"dense_motion_probe: the cache {folder} holds no {family!r}"
                             " questions in some split")
        splits = {s: (np.asarray(data[s].latents[idx]), y) for s, (idx, y) in picked.items()}
        result = out[family] = {}
        if family == "fast_motion":
            result["timed"] = {}
            for s, (idx, y) in picked.items():
                got = [timed(splits[s][0][k], data[s].examples[i]["marks"][0]["frames"])
                       for k, i in enumerate(idx)]
                result["timed"][s] = dict(accuracy=float(np.mean(np.asarray(got) == y)),
                                          questions=len(y))
            feats = {s: np.stack([lagged_features(x) for x in splits[s][0]])
                     for s in ("train", "test")}
            w = softmax_regression(feats["train"], splits["train"][1])
            result["lagged"] = {
                s: dict(accuracy=float(np.mean((np.c_[f, np.ones(len(f))] @ w).argmax(1)
                                               == splits[s][1])), questions=len(f))
                for s, f in feats.items()}
        classes = len(dense.QUESTIONS[family][1])
        runs = [train_network(splits, classes, seed) for seed in range(seeds)]
        result["network"] = {
            s: dict(accuracy=float(np.mean([r["accuracy"][s] for r in runs])),
                    per_seed=[r["accuracy"][s] for r in runs], questions=len(splits[s][1]))
            for s in dense.SPLITS}
        result["network_epochs"] = [r["epoch"] for r in runs]
    return out


DECODERS = (("timed", "yes", "each cell's change energy during the crossing, weighted by time,"
             " gives the moment it lights"),
            ("lagged", "no (fitted on train)", "softmax regression on lagged products of the"
             " halves' change energy"),
            ("network", "no (trained on train, epoch chosen on select)", "a temporal"
             " convolution network over every frame's tokens (TemporalNet), mean over seeds"))


def write(out: str, result: dict, meta: dict) -> list[str]:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(dict(meta, families=result), f, indent=1)
    lines = [
        "# What the dense-video latents carry of the hard families, read without the LLM", "",
        f"Written by `{meta['command']}`. Cache: {meta['cache']} ({meta['grid'][0]}x"
        f"{meta['grid'][1]} tokens per frame, every"
        f" frame of 128-frame windows; families {', '.join(meta['families'])}). Network seeds:"
        f" {meta['seeds']}.", "",
        "| family | chance | decoder | told when | split | questions | accuracy |",
        "|---|---|---|---|---|---|---|"]
    for family, by in result.items():
        chance = 1 / len(dense.QUESTIONS[family][1])
        for kind, told, _ in DECODERS:
            for split, r in by.get(kind, {}).items():
                seeds = (" (" + ", ".join(f"{a:.3f}" for a in r["per_seed"]) + ")"
                         if len(r.get("per_seed", ())) > 1 else "")
                lines.append(f"| {family} | {chance:.3f} | {kind} | {told} | {split} |"
                             f" {r['questions']} | {r['accuracy']:.3f}{seeds} |")
    lines += [""] + [f"- {kind}: {how}." for kind, _, how in DECODERS] + [
        "", "Decoders in frejax/studies/dense_motion_probe.py."]
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return [out + ".md", out + ".json"]


def main(argv):
    del argv
    f = flags.FLAGS
    families = dense.parse_families(f.families)
    config = dense_video_config.get_config()
    config.model.vision.latent_grid = (f.grid, f.grid)
    folder, _ = dense_video.build_cache(config, dense_video.SCALES["cpu"], families=families)
    result = measure(folder, families, f.seeds)
    meta = dict(command=" ".join(["python -m frejax.studies.dense_motion_probe"] + sys.argv[1:]),
                cache=os.path.basename(folder), families=list(families), seeds=f.seeds,
                grid=[f.grid, f.grid])
    for path in write(f.out, result, meta):
        print(path)
    for family, by in result.items():
        print(family, {k: {s: round(r["accuracy"], 3) for s, r in v.items()}
                       for k, v in by.items() if isinstance(v, dict)})


if __name__ == "__main__":
    flags.DEFINE_string("out", None, "report path without extension (docs/dense_motion_probe)")
    flags.DEFINE_string("families", "fast_motion,counting", "the families to build and read")
    flags.DEFINE_integer("seeds", 3, "network seeds")
    flags.DEFINE_integer("grid", 2, "tokens per frame side: DINOv2-S's 8x8 averaged to grid x grid")
    flags.mark_flag_as_required("out")
    cli.run(main, "frejax.studies.dense_motion_probe")
