"""The run context: the one place that builds the mesh, enters it and restores checkpoints."""

import jax
import pytest

from configs import short_video
from frejax.training import run as run_lib
from frejax.training.run import FIT, Run


def _config(shape=(-1, 1, 1)):
    c = short_video.get_config("smoke")
    c.mesh.shape = shape
    return c


def test_the_mesh_takes_the_devices_the_tool_asks_for():
    assert dict(run_lib.make_mesh(_config()).shape) == dict(data=8, fsdp=1, tensor=1)
    # Inference tools take the first prod(shape) devices, all of them for a -1.
    assert run_lib.make_mesh(_config((2, 1, 1)), FIT).devices.size == 2
    assert run_lib.make_mesh(_config((-1, 2, 1)), FIT).devices.size == 8
    # predict: the training mesh with data 1; params keep their fsdp/tensor layout.
    mesh = run_lib.make_mesh(_config((-1, 2, 1)), FIT, shape=(1, 2, 1))
    assert dict(mesh.shape) == dict(data=1, fsdp=2, tensor=1)
    assert run_lib.make_mesh(_config(), jax.devices()[:1]).devices.size == 1
    with pytest.raises(ValueError, match="mesh"):
        run_lib.make_mesh(_config((3, 1, 1)))  # 3 does not cover the 8 devices


def test_the_scope_enters_the_mesh_and_rules_and_nests():
    run = Run(_config())
    with run:
        assert jax.sharding.get_abstract_mesh().shape == run.mesh.shape
        with run:  # the engine enters it per call, also inside a caller's scope
            assert jax.sharding.get_abstract_mesh().shape == run.mesh.shape
        assert jax.sharding.get_abstract_mesh().shape == run.mesh.shape
    assert jax.sharding.get_abstract_mesh().empty


def test_the_setup_is_built_from_the_tokenizer_once():
    run = Run(_config())
    assert run.setup is run.setup
    assert run.setup.num_visual_tokens == run.setup.full_visual_tokens // 8  # short_video: 8x


def test_a_restore_of_a_missing_folder_names_it_and_creates_nothing(tmp_path):
    run = Run(_config())
    with pytest.raises(FileNotFoundError, match="absent: no such folder"):
        run.restore(str(tmp_path / "absent"), params_only=True)
    with pytest.raises(FileNotFoundError, match="absent/checkpoints: no such folder"):
        run.restore(str(tmp_path / "absent" / "checkpoints"), what="evaluate")
    assert not (tmp_path / "absent").exists()


def test_the_config_is_validated_by_key():
    bad = _config()
    bad.init.checkpoint = "/somewhere"  # without groups
    with pytest.raises(ValueError, match="config.init.checkpoint and config.init.groups"):
        Run(bad)
    bad.init.groups = "decoder"
    with pytest.raises(ValueError, match="config.init.groups: unknown groups"):
        Run(bad)
