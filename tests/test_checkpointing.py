"""frejax.training.checkpointing and resuming the main job: kill -9 and resume, SIGTERM, damaged
checkpoints, resharded restore, config drift, export.

The subprocess runs share one uninterrupted reference run (a checkpoint at every
step) and one persistent compilation cache, so only the reference compiles.
"""

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import short_video
from frejax.training import checkpointing, checksums, drift
from data_pipelines import datasets as data_lib
from frejax.inference import export
from frejax import sharding
from frejax.training import train
from frejax.training import train_state

# Orbax abandons the other read coroutines of a torn step when one of them fails; Python
# collects them later, inside whichever test runs then, and reports them as unraisable.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 16
_RUN_FLAGS = (f"--config.train.num_steps={NUM_STEPS}", "--config.train.log_every=1")


def _command(workdir, *flags):
    return [sys.executable, "-m", "frejax.main", "--config=configs/short_video.py:smoke",
            f"--workdir={workdir}", *_RUN_FLAGS, *flags]


@pytest.fixture(scope="module")
def run_env(tmp_path_factory):
    """One CPU device per run, as in a plain ``python -m frejax.main``; a shared compile cache."""
    cache = tmp_path_factory.mktemp("jax_cache")
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="",
                JAX_COMPILATION_CACHE_DIR=str(cache),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def _run(workdir, env, *flags):
    return subprocess.run(_command(workdir, *flags), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, run_env):
    """An uninterrupted run that keeps a checkpoint of every step."""
    workdir = tmp_path_factory.mktemp("reference")
    done = _run(workdir, run_env, "--config.train.checkpoint_every=1",
                f"--config.train.keep_checkpoints={NUM_STEPS}")
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


def _config():
    """The in-process twin of the subprocess runs' config."""
    config = short_video.get_config("smoke")
    config.train.update(num_steps=NUM_STEPS, log_every=1)
    return config


def _losses(workdir) -> dict[int, list[float]]:
    """Every logged train loss by step (a step re-run after a kill appears twice)."""
    out: dict[int, list[float]] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            if not line.endswith("\n"):  # being written right now
                break
            record = json.loads(line)
            if "train/loss" in record:
                out.setdefault(record["step"], []).append(record["train/loss"])
    return out


def _wait_for_logged_step(proc, workdir, step, timeout=300):
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(path) and max(_losses(workdir), default=0) >= step:
            return
        time.sleep(0.02)


def _restore(workdir, step, config=None, mesh_shape=(1, 1, 1), num_devices=1):
    """The saved train state of ``step``, restored in this process."""
    config = config or _config()
    mesh = sharding.make_mesh(mesh_shape, jax.devices()[:num_devices])
    with jax.set_mesh(mesh), sharding.axis_rules(config.sharding.rules):
        setup = train_state.make_setup(config, mesh, data_lib.make_tokenizer(config))
        ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), keep=100)
        state = ckpt.restore(step, setup.abstract_state)
        ckpt.close()
    return jax.device_get(state)


def _one_device(config):
    """The tokenizer, train setup and data iterator of ``config`` on the runs' single device."""
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    with jax.set_mesh(mesh), sharding.axis_rules(config.sharding.rules):
        tokenizer = data_lib.make_tokenizer(config)
        setup = train_state.make_setup(config, mesh, tokenizer)
        return tokenizer, setup, data_lib.make_train_iterator(config, tokenizer, mesh)


def _assert_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _data_position(workdir, step):
    path = os.path.join(workdir, "checkpoints", str(step), "data_iter", "process_0-of-1.json")
    with open(path) as f:
        return json.load(f)


def _committed_steps(workdir):
    ckpts = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(ckpts) if n.isdigit()) if os.path.isdir(ckpts) else []


# ----------------------------------------------------------------------------
# Exact resume, preemption, damaged checkpoints: real runs.
# ----------------------------------------------------------------------------


def test_kill_9_at_a_random_step_then_resume_equals_an_uninterrupted_run(
        reference, run_env, tmp_path):
    workdir = tmp_path / "run"
    kill_after = random.randint(4, NUM_STEPS - 6)
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(_command(workdir, "--config.train.checkpoint_every=2"),
                                cwd=REPO, env=run_env, stdout=subprocess.DEVNULL, stderr=log)
        _wait_for_logged_step(proc, workdir, kill_after)
        assert proc.poll() is None, f"the run ended before the kill at step {kill_after}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert max(_losses(workdir)) < NUM_STEPS
    committed = _committed_steps(workdir)

    resumed = _run(workdir, run_env, "--config.train.checkpoint_every=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if committed:
        assert f"Resuming from step {committed[-1]}" in resumed.stderr

    # Every step's loss, including steps run twice around the kill, is the
    # uninterrupted run's, bit for bit.
    want, got = _losses(reference), _losses(workdir)
    assert sorted(got) == list(range(1, NUM_STEPS + 1))
    differ = {s: (losses, want[s]) for s, losses in got.items() if losses != want[s] * len(losses)}
    assert not differ, (f"killed after step {kill_after}, committed {committed}; (got, want)"
                        f" by step: {differ}\n{resumed.stderr[-3000:]}")
    # Same params, optimiser state and data position at the end.
    _assert_identical(_restore(workdir, NUM_STEPS), _restore(reference, NUM_STEPS))
    assert _data_position(workdir, NUM_STEPS) == _data_position(reference, NUM_STEPS)


def test_sigterm_finishes_the_step_saves_and_exits_zero(reference, run_env, tmp_path):
    workdir = tmp_path / "run"
    with open(tmp_path / "out.log", "w") as out, open(tmp_path / "err.log", "w") as err:
        # No scheduled save before the end: the only checkpoint is the preemption one.
        proc = subprocess.Popen(_command(workdir, "--config.train.checkpoint_every=100"),
                                cwd=REPO, env=run_env, stdout=out, stderr=err)
        _wait_for_logged_step(proc, workdir, 2)
        assert proc.poll() is None, "the run ended before it could be preempted"
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=300)
    stdout = (tmp_path / "out.log").read_text()
    assert returncode == 0, (tmp_path / "err.log").read_text()[-3000:]
    found = re.search(r"Preempted: saved step (\d+) to (\S+);", stdout)
    assert found, stdout
    step, path = int(found[1]), found[2]
    # Signalled while step 3 or later ran; stopped before the end and before eval.
    assert 3 <= step < NUM_STEPS
    assert path == str(workdir / "checkpoints" / str(step))
    assert _committed_steps(workdir) == [step]
    assert checkpointing.find_damage(path, "process_0-of-1.json") is None
    assert sorted(_losses(workdir)) == list(range(1, step + 1))
    assert not (workdir / "results.json").exists()
    _assert_identical(_restore(workdir, step), _restore(reference, step))


def _truncate_largest_array_file(step_dir):
    files = [os.path.join(root, f) for root, _, names in os.walk(os.path.join(step_dir, "state"))
             for f in names if os.sep + "d" + os.sep in os.path.join(root, f)]
    victim = max(files, key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)


def test_damaged_latest_checkpoints_fall_back_to_the_newest_intact_one(reference, tmp_path, caplog):
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(reference / "checkpoints", ckpts)
    _truncate_largest_array_file(ckpts / str(NUM_STEPS))               # a torn array file
    os.remove(ckpts / str(NUM_STEPS - 1) / "commit_success.txt")        # never committed

    config = _config()
    tokenizer, setup, data_iter = _one_device(config)
    ckpt = checkpointing.Checkpointer(str(ckpts), keep=NUM_STEPS)
    with caplog.at_level("WARNING"):
        step, state = ckpt.restore_newest_intact(setup.abstract_state, config, data_iter)
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    assert step == NUM_STEPS - 2
    assert re.search(rf"step {NUM_STEPS} in \S+ is damaged \(cannot be read back", warnings)
    assert re.search(rf"step {NUM_STEPS - 1} in \S+ is damaged \(commit_success.txt is missing",
                     warnings)
    assert f"Resuming from step {NUM_STEPS - 2}, the newest intact checkpoint" in warnings
    _assert_identical(jax.device_get(state), _restore(reference, NUM_STEPS - 2))
    assert json.loads(json.dumps(data_iter.get_state())) == \
        _data_position(reference, NUM_STEPS - 2)

    # The damaged steps are kept under another name, out of the way of the run,
    # which saves the same step numbers again as it keeps going.
    assert (ckpts / f"{NUM_STEPS}.unusable").is_dir()
    assert (ckpts / f"{NUM_STEPS - 1}.unusable").is_dir()
    ckpt.save(NUM_STEPS - 1, state, data_iter, config, tokenizer)
    ckpt.close()
    assert checkpointing.find_damage(str(ckpts / str(NUM_STEPS - 1)), "process_0-of-1.json") \
        is None
    assert _committed_steps(tmp_path)[-2:] == [NUM_STEPS - 2, NUM_STEPS - 1]


def test_resuming_with_another_number_of_processes_is_refused_not_set_aside(reference, tmp_path):
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(reference / "checkpoints" / str(NUM_STEPS), ckpts / str(NUM_STEPS))
    data_iter_dir = ckpts / str(NUM_STEPS) / "data_iter"
    os.rename(data_iter_dir / "process_0-of-1.json", data_iter_dir / "process_0-of-2.json")
    (data_iter_dir / "process_1-of-2.json").write_text("{}")  # written by a second host

    config = _config()
    tokenizer, setup, data_iter = _one_device(config)
    ckpt = checkpointing.Checkpointer(str(ckpts), keep=NUM_STEPS)
    with pytest.raises(checkpointing.CheckpointMismatchError,
                       match=rf"step {NUM_STEPS} .* positions of 2 processes, this run has 1"):
        ckpt.restore_newest_intact(setup.abstract_state, config, data_iter)
    ckpt.close()
    assert (ckpts / str(NUM_STEPS)).is_dir()  # not mistaken for damage, nothing renamed


# ----------------------------------------------------------------------------
# Damage detection, drift, resharding, export: in process, on saved checkpoints.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("damage, reason", [
    (lambda d: os.remove(d / "commit_success.txt"), "commit_success.txt is missing"),
    (lambda d: os.remove(d / "state" / "commit_success.txt"),
     "state/commit_success.txt is missing"),
    (lambda d: os.remove(d / "_CHECKPOINT_METADATA"), "_CHECKPOINT_METADATA is missing"),
    (lambda d: (d / "state" / "_METADATA").write_text('{"tree_metadata": {'),
     "state/_METADATA is not valid JSON"),
    (lambda d: os.remove(d / "data_iter" / "process_0-of-1.json"),
     "data_iter/process_0-of-1.json is missing"),
])
def test_find_damage_names_the_missing_or_broken_file(reference, tmp_path, damage, reason):
    step_dir = tmp_path / "3"
    shutil.copytree(reference / "checkpoints" / "3", step_dir)
    assert checkpointing.find_damage(str(step_dir), "process_0-of-1.json") is None
    damage(step_dir)
    assert reason in checkpointing.find_damage(str(step_dir), "process_0-of-1.json")


def _abstract_state(config, mesh_shape=(-1, 1, 1)):
    mesh = sharding.make_mesh(mesh_shape)
    with jax.set_mesh(mesh), sharding.axis_rules(config.sharding.rules):
        return train_state.make_setup(config, mesh, data_lib.make_tokenizer(config)).abstract_state


def test_when_every_checkpoint_is_damaged_nothing_is_renamed(reference, tmp_path):
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(reference / "checkpoints" / "5", ckpts / "5")
    _truncate_largest_array_file(ckpts / "5")
    ckpt = checkpointing.Checkpointer(str(ckpts))
    with pytest.raises(checkpointing.NoIntactCheckpointError, match="step 5: cannot be read"):
        ckpt.restore_newest_intact(_abstract_state(_config()), _config())
    ckpt.close()
    assert sorted(os.listdir(ckpts)) == ["5"]


def test_the_tokenizer_comes_from_the_newest_step_that_still_holds_one(reference, tmp_path):
    """Evaluation and export build the model from the saved tokenizer before restoring: a
    half-written newest step must not hide the one every older step holds."""
    ckpts = tmp_path / "checkpoints"
    for step in (4, 5):
        shutil.copytree(reference / "checkpoints" / str(step), ckpts / str(step))
    shutil.rmtree(ckpts / "5" / "tokenizer")
    ckpt = checkpointing.Checkpointer(str(ckpts))
    with pytest.raises(FileNotFoundError, match="step 5 .* holds no tokenizer"):
        ckpt.restore_tokenizer(5)
    assert ckpt.restore_newest_tokenizer("export").vocab == \
        data_lib.make_tokenizer(_config()).vocab
    ckpt.close()
    empty = checkpointing.Checkpointer(str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="no checkpoint to export in"):
        empty.restore_newest_tokenizer("export")
    empty.close()


def test_config_drift_in_model_shape_fails_naming_the_keys(reference):
    config = _config()
    config.model.llm.width = 64
    config.compressor.ratio = 4.0
    ckpt = checkpointing.Checkpointer(str(reference / "checkpoints"), keep=100)
    with pytest.raises(drift.ConfigDriftError) as error:
        ckpt.restore_newest_intact(_abstract_state(config), config)
    ckpt.close()
    message = str(error.value)
    assert "model.llm.width: checkpoint 32, now 64" in message
    assert "compressor.ratio: checkpoint 8.0, now 4.0" in message
    assert "eval." not in message


def test_config_drift_allows_safe_changes_and_warns_about_others(reference, caplog):
    config = _config()
    config.eval.update(batch_size=4, num_examples=4)
    config.train.update(log_every=5, num_steps=NUM_STEPS + 10, checkpoint_every=7,
                        progress_bar=True)
    config.optim.learning_rate = 1e-3
    ckpt = checkpointing.Checkpointer(str(reference / "checkpoints"), keep=100)
    with caplog.at_level("INFO"):
        step, state = ckpt.restore_newest_intact(_abstract_state(config), config)
    ckpt.close()
    assert step == NUM_STEPS and int(state["step"]) == NUM_STEPS
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "optim.learning_rate 0.002 -> 0.001" in warnings
    assert "eval.batch_size" not in warnings and "train.num_steps" not in warnings


def test_checkpoint_from_8_devices_restores_onto_4_with_identical_values(tmp_path):
    config = _config()
    # Heads and vocabulary split over tensor=2 on the 4-device mesh.
    vocab = data_lib.make_tokenizer(config).vocab_size
    config.model.llm.update(kv_heads=2, vocab_size=vocab + vocab % 2)

    def setup_on(shape, devices):
        mesh = sharding.make_mesh(shape, devices)
        with jax.set_mesh(mesh), sharding.axis_rules(config.sharding.rules):
            tokenizer = data_lib.make_tokenizer(config)
            return (mesh, train_state.make_setup(config, mesh, tokenizer),
                    data_lib.make_train_iterator(config, tokenizer, mesh))

    _, setup8, data_iter = setup_on((2, 4, 1), jax.devices()[:8])   # data x fsdp
    rng = np.random.default_rng(0)
    state = jax.tree.map(
        lambda a: jax.device_put(rng.normal(size=a.shape).astype(a.dtype), a.sharding),
        setup8.abstract_state)
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
    ckpt.save(7, state, data_iter, config, data_lib.make_tokenizer(config))
    ckpt.close()

    mesh4, setup4, _ = setup_on((2, 1, 2), jax.devices()[:4])           # data x tensor
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
    restored = ckpt.restore(7, setup4.abstract_state)
    ckpt.close()
    _assert_identical(jax.device_get(restored), jax.device_get(state))
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(setup4.state_shardings),
                         strict=True):
        assert got.sharding == want
    # The layout really changed: (vocab, embed) was split over fsdp=4, is now over tensor=2.
    embedding = restored["params"]["llm"]["embedding"]
    vocab, embed = embedding.shape
    assert state["params"]["llm"]["embedding"].sharding.shard_shape(embedding.shape) == \
        (vocab, embed // 4)
    assert embedding.sharding.shard_shape(embedding.shape) == (vocab // 2, embed)
    assert embedding.sharding.device_set == set(mesh4.devices.flat)


def test_export_writes_safetensors_that_load_back_without_pickle(reference, tmp_path):
    output = str(tmp_path / "params.safetensors")
    config = _config()
    assert export.export_checkpoint(config, str(reference), output) == NUM_STEPS
    params, saved_config, step = export.load(output)
    assert step == NUM_STEPS
    assert saved_config["model"] == json.loads(json.dumps(config.model.to_dict()))
    _assert_identical(params, _restore(reference, NUM_STEPS)["params"])
    # A safetensors file from elsewhere is refused by name, not half-read.
    from safetensors.numpy import save_file
    save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="other.safetensors: not a frejax export"):
        export.load(str(tmp_path / "other.safetensors"))


def test_wall_clock_saves_are_asked_every_log_every_steps_and_can_be_off(monkeypatch):
    cfg = short_video.get_config("smoke").train
    cfg.update(checkpoint_minutes=5.0, log_every=10)
    now = [1000.0]
    monkeypatch.setattr(train.time, "monotonic", lambda: now[0])
    last_save = now[0]
    now[0] += 4 * 60
    assert not train._save_time_reached(10, last_save, cfg)  # 4 minutes: not yet
    now[0] += 2 * 60
    assert not train._save_time_reached(11, last_save, cfg)  # due, but not a log step
    assert train._save_time_reached(20, last_save, cfg)
    cfg.checkpoint_minutes = 0.0  # off
    assert not train._save_time_reached(20, last_save, cfg)


def test_params_only_restore_equals_the_params_of_a_full_restore(reference):
    config = _config()
    mesh = sharding.make_mesh((2, 2, 1), jax.devices()[:4])
    with jax.set_mesh(mesh), sharding.axis_rules(config.sharding.rules):
        setup = train_state.make_setup(config, mesh, data_lib.make_tokenizer(config))
        ckpt = checkpointing.Checkpointer(str(reference / "checkpoints"), keep=100)
        params = ckpt.restore_params(NUM_STEPS, setup.abstract_state)
        ckpt.close()
    wanted = setup.abstract_state["params"]
    assert jax.tree.structure(params) == jax.tree.structure(wanted)
    jax.tree.map(lambda p, w: (p.shape, p.sharding) == (w.shape, w.sharding) or
                 pytest.fail(f"{p.shape} {p.sharding} != {w.shape} {w.sharding}"), params, wanted)
    _assert_identical(jax.device_get(params), _restore(reference, NUM_STEPS)["params"])


def test_a_checkpoint_of_unstacked_layers_is_refused_with_the_flags_that_restore_it():
    shape = ((2, 3), "float32")
    old = {"params/llm/layers/0/attn/query/kernel": shape}
    new = {"params/llm/layers/attn/query/kernel": shape}
    assert "--config.model.llm.scan_layers=False" in checkpointing._layer_layout_hint(old, new)
    assert "--config.model.llm.scan_layers=True" in checkpointing._layer_layout_hint(new, old)
    assert checkpointing._layer_layout_hint(new, new) == ""


# ----------------------------------------------------------------------------
# Silent corruption: checksums of every saved array.
# ----------------------------------------------------------------------------


def _flip_a_bit_in_the_largest_array_file(step_dir, shift=0):
    files = [os.path.join(root, f) for root, _, names in os.walk(os.path.join(step_dir, "state"))
             for f in names if os.sep + "d" + os.sep in os.path.join(root, f)]
    victim = max(files, key=os.path.getsize)
    at = (os.path.getsize(victim) // 2 + shift) % os.path.getsize(victim)
    with open(victim, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x10]))


def test_a_flipped_bit_in_an_array_file_is_found_by_its_checksum(reference, tmp_path, caplog):
    ckpts = tmp_path / "checkpoints"
    truth = _restore(reference, NUM_STEPS)
    # A flip that Orbax alone reads back without complaint, with other values (most
    # offsets inside a compressed chunk; a few break decoding, which is found already).
    for attempt in range(8):
        shutil.rmtree(ckpts, ignore_errors=True)
        shutil.copytree(reference / "checkpoints", ckpts)
        _flip_a_bit_in_the_largest_array_file(ckpts / str(NUM_STEPS), 977 * attempt)
        try:
            silent = _restore(tmp_path, NUM_STEPS)
        except Exception:  # noqa: BLE001  (a flip that breaks decoding: try another)
            continue
        if any(jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b), silent,
                                            truth))):
            break
    else:
        pytest.fail("no offset gave a silently different restore")

    config = _config()
    tokenizer, setup, data_iter = _one_device(config)
    ckpt = checkpointing.Checkpointer(str(ckpts), keep=NUM_STEPS)
    with caplog.at_level("WARNING"):
        step, state = ckpt.restore_newest_intact(setup.abstract_state, config, data_iter)
    ckpt.close()
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    assert step == NUM_STEPS - 1
    assert re.search(rf"step {NUM_STEPS} in \S+ is damaged \(1 array\(s\) read back with another"
                     r" checksum than saved \(flipped bits on disk\?\): (params|opt_state)/", warnings)
    assert (ckpts / f"{NUM_STEPS}.unusable").is_dir()
    _assert_identical(jax.device_get(state), _restore(reference, NUM_STEPS - 1))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int32", "uint8", "bool"])
def test_checksums_see_every_single_bit_and_ignore_the_mesh(dtype):
    x = np.asarray(jax.random.normal(jax.random.key(1), (8, 12)) * 50).astype(dtype)
    base = checksums.state_checksums({"x": x})["x"]
    mesh = sharding.make_mesh((2, 4, 1), jax.devices()[:8])
    sharded = jax.device_put(x, jax.NamedSharding(mesh, jax.P("data", "fsdp")))
    assert checksums.state_checksums({"x": sharded})["x"] == base
    bits = np.dtype(dtype).itemsize * 8 if dtype != "bool" else 1
    raw = x.view(np.uint8) if dtype == "bool" else x
    for i, j in ((0, 0), (3, 7), (7, 11)):
        for k in range(bits):
            y = raw.copy()
            word = y.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[y.dtype.itemsize])
            word[i, j] ^= np.array(1 << k).astype(word.dtype)
            if dtype == "bool":
                y = y.view(np.bool_)
            assert checksums.state_checksums({"x": y})["x"] != base, (i, j, k)


def test_a_params_only_restore_refuses_flipped_bits(reference, tmp_path):
    """Where a flipped bit in a file lands (params or optimiser state) depends on how Orbax
    packs the arrays; here one bit of one param is flipped for sure: the state is re-saved
    with it and the step keeps the checksums of the original."""
    config = _config()
    tokenizer, setup, data_iter = _one_device(config)
    state = _restore(reference, NUM_STEPS)
    name = "params/llm/embedding"
    table = np.array(state["params"]["llm"]["embedding"])
    table.view(np.uint32)[1, 2] ^= np.uint32(1 << 9)
    state["params"]["llm"]["embedding"] = table
    ckpts = tmp_path / "checkpoints"
    ckpt = checkpointing.Checkpointer(str(ckpts), keep=NUM_STEPS)
    ckpt.save(NUM_STEPS, state, data_iter, config, tokenizer)
    ckpt.wait()
    shutil.copyfile(reference / "checkpoints" / str(NUM_STEPS) / "checksums" / "metadata",
                    ckpts / str(NUM_STEPS) / "checksums" / "metadata")
    with pytest.raises(checksums.ChecksumMismatchError, match=f"{name}$"):
        ckpt.restore_params(NUM_STEPS, setup.abstract_state)
    ckpt.close()


# ----------------------------------------------------------------------------
# Storage faults: a full disk and a read-only directory during a save.
# ----------------------------------------------------------------------------


@contextlib.contextmanager
def _small_filesystem(path, size="3m"):
    """A size-limited tmpfs at ``path`` (needs mount rights; the test says when it has none)."""
    os.makedirs(path, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    try:
        yield mounted.returncode == 0
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _tiny_state(n):
    return dict(step=jnp.asarray(n, jnp.int32), params=dict(w=jnp.arange(n, dtype=jnp.float32)))


def test_a_full_disk_or_read_only_directory_fails_clearly_and_keeps_earlier_steps(tmp_path):
    config = _config()
    tokenizer, _, data_iter = _one_device(config)
    with _small_filesystem(tmp_path / "fs") as real:
        ckpts = tmp_path / "fs" / "checkpoints"
        ckpt = checkpointing.Checkpointer(str(ckpts), keep=5)
        ckpt.save(1, _tiny_state(16), data_iter, config, tokenizer)
        ckpt.wait()
        big = _tiny_state(2_000_000)  # 8 MB of float32: more than the 3 MB filesystem
        if not real:  # no mount rights: the OS error TensorStore reports, injected
            def full(*args, **kwargs):
                raise ValueError("RESOURCE_EXHAUSTED: Failed writing: No space left on device"
                                 " [os_error_code='28']")
            ckpt._manager.wait_until_finished = full
        ckpt.save(2, big, data_iter, config, tokenizer)
        with pytest.raises(checkpointing.CheckpointSaveError) as failed:
            ckpt.wait()
        message = str(failed.value)
        assert "saving checkpoint step 2" in message and "the disk is full" in message
        assert "Committed steps, intact: [1]" in message and "resume from step 1" in message
        if real:
            ckpt.close()
            assert checkpointing.find_damage(str(ckpts / "1")) is None
            assert sorted(os.listdir(ckpts)) == ["1", "2.orbax-checkpoint-tmp"]
            # Resuming takes step 1; the unfinished step 2 is never a candidate.
            reader = checkpointing.Checkpointer(str(ckpts), keep=5)
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                    _tiny_state(16))
            step, state = reader.restore_newest_intact(abstract, config)
            reader.close()
            assert step == 1
            np.testing.assert_array_equal(state["params"]["w"], np.arange(16))
            # A read-only directory: the next save fails, naming the cause.
            subprocess.run(["mount", "-o", "remount,ro", str(tmp_path / "fs")], check=True)
            ckpt = checkpointing.Checkpointer(str(ckpts), keep=5)
            with pytest.raises(checkpointing.CheckpointSaveError,
                               match="step 3 .* failed: the directory is read-only"):
                ckpt.save(3, _tiny_state(16), data_iter, config, tokenizer)
                ckpt.wait()
            subprocess.run(["mount", "-o", "remount,rw", str(tmp_path / "fs")], check=True)
            assert sorted(n for n in os.listdir(ckpts) if n.isdigit()) == ["1"]
