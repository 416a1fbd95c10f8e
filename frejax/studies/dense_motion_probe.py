r"""Model-free: how much of the fast mover's direction the dense-video latents carry.

    python -m frejax.studies.dense_motion_probe --out=docs/dense_motion_probe

Reads the latent cache of ``configs/dense_video.py`` (built by ``frejax.studies.dense_video``
if missing) and decodes each ``fast_motion`` question's answer (left, right, up, down)
from the latents without a model, two ways:

* **timed**: told which frames the square crosses in, the energy of each cell's change
  from the frames around the crossing, weighted by time, gives the moment each cell
  lights; the square moves from the cells that light first to those that light last.
* **learned**: not told when, a softmax regression reads the lagged products of the
  left/right and top/bottom cells' change energy (camera motion's floor removed), fitted
  on ``train`` and scored on ``test``.

If both stay far below the model's bar while brief events are answered, the direction is
weakly held by these tokens (how coarse they are, and the camera's own motion), not lost
by the model that reads them. Written to ``<out>.{md,json}`` with the command.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

from configs import dense_video as dense_video_config
from data_pipelines import latent_source
from frejax import cli
from frejax.studies import dense_video

FAMILY = "fast_motion"
OPTIONS = "ABCD"              # left, right, up, down
LAGS = range(-8, 9)           # frames between the two halves' changes


def _change(latents: np.ndarray) -> np.ndarray:
    """``(T, 4, D)`` latents of a 2x2 grid -> ``(T - 1, 4)`` frame-to-frame change energy."""
    return np.linalg.norm(np.diff(latents.astype(np.float32), axis=0), axis=-1)


def _direction(first: dict[str, float]) -> int:
    """Moments the halves light (``left``, ``right``, ``top``, ``bottom``) -> the answer."""
    across, down = first["left"] - first["right"], first["top"] - first["bottom"]
    if abs(across) > abs(down):
        return 1 if across < 0 else 0            # left lit first: moving right
    return 3 if down < 0 else 2


def timed(latents: np.ndarray, frames: list[int]) -> int:
    """The answer from the cells' change energy during the crossing ``frames``."""
    a, b = frames[0], frames[-1]
    t = latents.shape[0]
    around = [k for k in range(max(0, a - 3), min(t, b + 4)) if not a <= k <= b] or [0]
    base = latents[around].astype(np.float32).mean(0)
    energy = np.linalg.norm(latents[a:b + 1].astype(np.float32) - base, axis=-1)   # (k, 4)
    weights = energy / (energy.sum(0, keepdims=True) + 1e-6)
    moment = (weights * np.arange(len(energy))[:, None]).sum(0)       # per cell: TL TR BL BR
    return _direction(dict(left=(moment[0] + moment[2]) / 2, right=(moment[1] + moment[3]) / 2,
                           top=(moment[0] + moment[1]) / 2, bottom=(moment[2] + moment[3]) / 2))


def lagged_features(latents: np.ndarray) -> np.ndarray:
    """Peak lagged products of the halves' change energy, camera motion's floor removed."""
    change = _change(latents)
    change = np.maximum(change - np.median(change, axis=0), 0)
    halves = ((change[:, 0] + change[:, 2], change[:, 1] + change[:, 3]),
              (change[:, 0] + change[:, 1], change[:, 2] + change[:, 3]))
    out = []
    for a, b in halves:
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


def _questions(folder: str, split: str):
    data = latent_source.load(folder, split)
    idx = [i for i, e in enumerate(data.examples) if e["family"] == FAMILY]
    return data, idx


def measure(folder: str) -> dict:
    grid = latent_source.manifest(folder)["grid"]
    if list(grid) != [2, 2]:
        raise ValueError(f"dense_motion_probe: reads 2x2 latent grids, the cache has {grid}")
    out = dict(timed={}, learned={})
    feats = {}
    for split in ("train", "select", "test"):
        data, idx = _questions(folder, split)
        answers = np.asarray([OPTIONS.index(data.examples[i]["answer"]) for i in idx])
        got = [timed(np.asarray(data.latents[i]), data.examples[i]["marks"][0]["frames"])
               for i in idx]
        out["timed"][split] = dict(accuracy=float(np.mean(np.asarray(got) == answers)),
                                   questions=len(idx))
        if split != "select":
            feats[split] = (np.stack([lagged_features(np.asarray(data.latents[i]))
                                      for i in idx]), answers)
    w = softmax_regression(*feats["train"])
    for split, (x, y) in feats.items():
        pred = (np.c_[x, np.ones(len(x))] @ w).argmax(1)
        out["learned"][split] = dict(accuracy=float(np.mean(pred == y)), questions=len(y))
    return out


def write(out: str, result: dict, meta: dict) -> list[str]:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(dict(meta, **result), f, indent=1)
    lines = [
        "# The fast mover's direction in the dense-video latents, without a model", "",
        f"Written by `{meta['command']}`. Cache: {meta['cache']} (2x2 tokens per frame, every"
        " frame of 128-frame windows). Chance: 0.25.", "",
        "| decoder | told when | split | questions | accuracy |", "|---|---|---|---|---|"]
    for kind, told in (("timed", "yes"), ("learned", "no (fitted on train)")):
        for split, r in result[kind].items():
            lines.append(f"| {kind} | {told} | {split} | {r['questions']} | {r['accuracy']:.3f} |")
    lines += ["", "timed: each cell's change energy during the crossing, weighted by time, gives"
              " the moment it lights; learned: softmax regression on lagged products of the"
              " halves' change energy (frejax/studies/dense_motion_probe.py)."]
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return [out + ".md", out + ".json"]


def main(argv):
    del argv
    f = flags.FLAGS
    config = dense_video_config.get_config()
    folder, _ = dense_video.build_cache(config, dense_video.SCALES["cpu"])
    result = measure(folder)
    meta = dict(command="python -m frejax.studies.dense_motion_probe " + " ".join(sys.argv[1:]),
                cache=os.path.basename(folder))
    for path in write(f.out, result, meta):
        print(path)
    for kind in ("timed", "learned"):
        print(kind, {s: round(r["accuracy"], 3) for s, r in result[kind].items()})


if __name__ == "__main__":
    flags.DEFINE_string("out", None, "report path without extension (docs/dense_motion_probe)")
    flags.mark_flag_as_required("out")
    cli.run(main, "frejax.studies.dense_motion_probe")
