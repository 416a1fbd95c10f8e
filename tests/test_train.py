"""The main job end to end: a real few-step run through ``frejax.main`` and its pieces."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import short_video
from data_pipelines import datasets as data_lib
from frejax import sharding
from frejax.training import train
from frejax.training import train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(workdir, *flags, timeout=300):
    cmd = [sys.executable, "-m", "frejax.main", "--config=configs/short_video.py:smoke",
           f"--workdir={workdir}", *flags]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_smoke_run_through_main_trains_evaluates_and_resumes(tmp_path):
    workdir = str(tmp_path / "run")
    first = _main(workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.load(open(os.path.join(workdir, "results.json")))
    for key in ("accuracy", "accuracy_by_family", "visual_tokens_per_video",
                "full_visual_tokens_per_video", "compression_ratio", "compressor", "step",
                "num_examples"):
        assert key in results, key
    assert results["step"] == 4 and results["compressor"] == "fre_res"
    assert results["compression_ratio"] == pytest.approx(8.0)
    assert results["num_examples"] == 12
    lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [l["step"] for l in lines] == [1, 2, 4]
    assert all(np.isfinite(l["train/loss"]) for l in lines)
    assert os.listdir(os.path.join(workdir, "tensorboard"))

    # Same workdir, more steps: continues from the saved step 4, not from scratch.
    second = _main(workdir, "--config.train.num_steps=6")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resuming from step 4" in second.stderr
    assert json.load(open(os.path.join(workdir, "results.json")))["step"] == 6

    evaluated = _main(workdir, "--config.train.num_steps=6", "--mode=eval")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "accuracy" in evaluated.stdout


def test_killed_run_resumes_from_last_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "frejax.main", "--config=configs/short_video.py:smoke",
           f"--workdir={workdir}", "--config.train.num_steps=400",
           "--config.train.checkpoint_every=3", "--config.train.async_checkpoints=False"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpts = workdir / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    again = _main(str(workdir), f"--config.train.num_steps={saved + 3}",
                  "--config.train.checkpoint_every=3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resuming from step {saved}" in again.stderr


def _losses(config, devices, batches):
    mesh = sharding.make_mesh(config.mesh.shape, devices)
    with jax.set_mesh(mesh), sharding.axis_rules(config.sharding.rules):
        tok = data_lib.make_tokenizer(config)
        setup = train_state.make_setup(config, mesh, tok)
        state = train_state.init_state(config, setup, tok)
        step = train.make_train_step(setup, config, sharding.batch_sharding(mesh))
        losses = []
        for b in batches:
            state, metrics = step(state, data_lib.to_global(b, sharding.batch_sharding(mesh)))
            losses.append(float(metrics["loss"]))
    return np.array(losses)


@pytest.mark.parametrize("accum_steps", [1, 2])
def test_train_step_same_loss_on_1_and_8_devices(accum_steps):
    config = short_video.get_config("smoke")
    config.optim.accum_steps = accum_steps
    config.train.batch_size = 8 * accum_steps  # each micro-batch splits over 8 devices
    tok = data_lib.make_tokenizer(config)
    mesh1 = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    with jax.set_mesh(mesh1), sharding.axis_rules(config.sharding.rules):
        it = data_lib.make_train_iterator(config, tok, mesh1)
        batches = [next(it) for _ in range(3)]
    config.mesh.shape = (1, 1, 1)
    one = _losses(config, jax.devices()[:1], batches)
    config.mesh.shape = (4, 2, 1)
    eight = _losses(config, jax.devices()[:8], batches)
    np.testing.assert_allclose(one, eight, atol=1e-5, rtol=0)
    assert one[-1] < one[0]  # it learns


def test_gradient_accumulation_keeps_micro_batches_sharded_and_saves_memory():
    """Read from the compiled program on 8 devices at a fixed global batch: nothing moves
    the batch between devices (no all-gather, all-to-all or collective-permute: each
    micro-batch stays on every device; a pure data-parallel step only all-reduces) and
    temporaries fall as accum_steps rises."""
    from data_pipelines import input_pipeline  # noqa: PLC0415

    temps = {}
    for accum in (1, 2, 4):
        config = short_video.get_config("smoke")
        config.mesh.shape = (8, 1, 1)
        config.train.batch_size = 32
        config.optim.accum_steps = accum
        mesh = sharding.make_mesh(config.mesh.shape, jax.devices()[:8])
        with sharding.axis_rules(config.sharding.rules):
            tok = data_lib.make_tokenizer(config)
            setup = train_state.make_setup(config, mesh, tok)
            bs = sharding.batch_sharding(mesh)
            example = input_pipeline.VideoQAFeatures(
                tok, *data_lib.text_lengths(config, tok),
                template=config.data.prompt_template).map(data_lib.make_source(config, "train", 1)[0])
            batch = {k: jax.ShapeDtypeStruct((32,) + v.shape, v.dtype, sharding=bs)
                     for k, v in example.items() if v.dtype.kind in "biuf"}
            with jax.set_mesh(mesh):
                compiled = train.make_train_step(setup, config, bs).lower(
                    setup.abstract_state, batch).compile()
        moves = [line.strip()[:120] for line in compiled.as_text().splitlines()
                 if re.search(r" (all-gather|all-to-all|collective-permute)(-start)?\(", line)]
        assert not moves, (accum, moves[:3])
        temps[accum] = compiled.memory_analysis().temp_size_in_bytes
    assert temps[1] > temps[2] > temps[4], temps


def test_bfloat16_training_follows_the_float32_loss_curve():
    """40 steps of the smoke run in each dtype from the same init and batches: every bf16
    loss within 5% (relative) of the float32 one, and both learn."""
    config = short_video.get_config("smoke")
    config.train.num_steps = 40
    config.mesh.shape = (1, 1, 1)
    tok = data_lib.make_tokenizer(config)
    mesh1 = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    with jax.set_mesh(mesh1), sharding.axis_rules(config.sharding.rules):
        it = data_lib.make_train_iterator(config, tok, mesh1)
        batches = [next(it) for _ in range(40)]
    curves = {}
    for dtype in ("float32", "bfloat16"):
        config.train.dtype = dtype
        curves[dtype] = _losses(config, jax.devices()[:1], batches)
    f32, bf16 = curves["float32"], curves["bfloat16"]
    assert np.all(np.abs(bf16 - f32) <= 0.05 * f32), np.stack([f32, bf16])
    assert f32[-5:].mean() < 0.8 * f32[:5].mean() and bf16[-5:].mean() < 0.8 * bf16[:5].mean()


def test_non_finite_loss_stops_before_any_checkpoint(tmp_path):
    config = short_video.get_config("smoke")
    config.train.checkpoint_every = 1
    config.optim.update(learning_rate=1e30, warmup_steps=0, clip_norm=1e30)
    with pytest.raises(train.NonFiniteLossError, match="non-finite"):
        train.train_and_evaluate(config, str(tmp_path))
    ckpts = tmp_path / "checkpoints"
    saved = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.exists() else []
    # Step 1 may be saved (its loss is that of the initial params); no later one is.
    assert all(s <= 1 for s in saved), saved


def test_micro_batch_that_cannot_split_over_the_mesh_is_a_config_error():
    config = short_video.get_config("smoke")
    config.optim.accum_steps = 2  # micro-batch of 4 on 8 devices
    mesh = sharding.make_mesh((4, 2, 1), jax.devices()[:8])
    with jax.set_mesh(mesh), sharding.axis_rules(config.sharding.rules):
        with pytest.raises(ValueError, match="train.batch_size / optim.accum_steps"):
            data_lib.make_train_iterator(config, data_lib.make_tokenizer(config), mesh)
