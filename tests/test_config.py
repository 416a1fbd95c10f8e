"""frejax.config_lib and configs/: one schema, per-method compressor sections, errors that
name the key, every shipped config variant valid."""

import importlib
import os
import subprocess
import sys

import pytest

from configs import long_video, short_video
from frejax import compression, config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_compressor_section_comes_from_the_registry():
    c = config_lib.compressor_config()
    assert set(compression.sections()) == {"fre_res", "spatial_pool", "temporal_merge",
                                           "frame_budgets"}
    for section in compression.sections():
        assert section in c
    assert c.fre_res.absorber.window == 3 and c.temporal_merge.threshold == 0.9


@pytest.mark.parametrize("name, key, value", [
    ("uniform_frames", "fre_res.num_coeffs", 4),
    ("uniform_frames", "fre_res.absorber.enabled", False),
    ("fre_res", "temporal_merge.threshold", 0.5),
    ("temporal_merge", "spatial_pool.mode", "bilinear"),
])
def test_an_option_of_another_method_fails_naming_it(name, key, value):
    c = short_video.get_config()
    c.compressor.name = name
    section, _, rest = key.partition(".")
    target = c.compressor[section]
    *parents, leaf = rest.split(".")
    for p in parents:
        target = target[p]
    target[leaf] = value
    with pytest.raises(ValueError, match=rf"config\.compressor\.{key}: an option of"):
        config_lib.validate(c)


def test_the_chosen_methods_options_are_checked():
    c = short_video.get_config()
    c.compressor.fre_res.output = "both"
    with pytest.raises(ValueError, match=r"config\.compressor\.fre_res\.output must be one of"):
        config_lib.validate(c)
    c = short_video.get_config("compressor=temporal_merge")
    c.compressor.temporal_merge.threshold = 2.0
    with pytest.raises(ValueError, match=r"compressor\.temporal_merge\.threshold must be a cosine"):
        config_lib.validate(c)
    c = short_video.get_config()
    c.compressor.fre_res.absorber.heads = 3
    with pytest.raises(ValueError, match=r"absorber\.heads \(3\) must divide"):
        config_lib.validate(c)


def test_pod_scale_sets_fre_res_options_only_for_fre_res():
    assert long_video.get_config("scale=pod").compressor.fre_res.absorber.heads == 16
    other = long_video.get_config("scale=pod,compressor=uniform_frames")
    assert other.compressor.fre_res.absorber.heads == 4  # untouched default
    config_lib.validate(other)


def test_unknown_keys_and_impossible_values_name_the_key():
    c = short_video.get_config()
    c.data.unlock()
    c.data.num_frame = 3
    with pytest.raises(ValueError, match=r"unknown keys \['data\.num_frame'\]"):
        config_lib.validate(c)
    c = short_video.get_config()
    c.train.num_steps = -1
    with pytest.raises(ValueError, match=r"config\.train\.num_steps must be >= 0"):
        config_lib.validate(c)
    c.train.num_steps = 0  # evaluates the initial (e.g. init.checkpoint's) params only
    config_lib.validate(c)


def test_check_override_flags_names_a_missing_key():
    config_lib.check_override_flags(["main", "--config.compressor.fre_res.num_coeffs=2",
                                     "--workdir=x"])
    with pytest.raises(config_lib.UnknownKeyError, match=r"config\.compressor\.fre_res\.pool_mode does not"
                                         r" exist; config\.compressor\.fre_res has \[.*'pool'"):
        config_lib.check_override_flags(["main", "--config.compressor.fre_res.pool_mode=avg"])


def test_a_stale_key_on_the_command_line_stops_the_main_job():
    """One line on stderr and exit status 2, as every input error (the flag parser's
    check of a key the schema lacks; validate's check of an option of another method)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for flags, expected in (
            (["--config.compressor.fre_res.pool_mode=avg"],
             "config.compressor.fre_res.pool_mode does not exist"),
            (["--config.compressor.name=uniform_frames", "--config.compressor.fre_res.num_coeffs=2"],
             "config.compressor.fre_res.num_coeffs: an option of")):
        out = subprocess.run(
            [sys.executable, "-m", "frejax.main", "--config=configs/short_video.py:smoke",
             "--workdir=unused", *flags], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=120)
        last = out.stderr.strip().splitlines()[-1]
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert last.startswith("frejax.main: error:") and expected in last, last


def test_data_keys_of_the_other_kind_of_data_fail_naming_them():
    # Each source declares its keys (data_pipelines.sources); one set for another is refused.
    c = short_video.get_config()
    c.data.root = "my_videos"  # a real-video key while the embedded benchmark is chosen
    with pytest.raises(ValueError, match=r"config\.data\.root: a key of data\.name .*video_folder"
                                         r".* but config\.data\.name is 'synthetic_video_qa'"):
        config_lib.validate(c)
    c = short_video.get_config()
    c.data.update(name="video_folder", root="r", train_annotations="t", eval_annotations="e")
    c.data.synthetic.background_noise = "clip"
    with pytest.raises(ValueError, match=r"config\.data\.synthetic\.background_noise: a key of"
                                         r" data\.name synthetic_video_qa"):
        config_lib.validate(c)


def test_config_validation_names_the_key():
    config = short_video.get_config("smoke")
    config.compressor.fre_res.output = "both"
    with pytest.raises(ValueError, match="compressor.fre_res.output"):
        config_lib.validate(config)
    config = short_video.get_config("smoke")
    config.model.llm.kv_heads = 3
    with pytest.raises(ValueError, match="kv_heads"):
        config_lib.validate(config)
    config = short_video.get_config("smoke")
    config.data.synthetic.train_family_weights = (1, 2, 3)
    with pytest.raises(ValueError, match="data.synthetic.train_family_weights"):
        config_lib.validate(config)
    config = short_video.get_config("smoke")
    config.data.synthetic.background_noise = "static"
    with pytest.raises(ValueError, match="data.synthetic.background_noise"):
        config_lib.validate(config)
    config = short_video.get_config("smoke")
    config.optim.warmup_steps = config.train.num_steps  # no step left for the decay
    with pytest.raises(ValueError, match="optim.warmup_steps"):
        config_lib.validate(config)
    with pytest.raises(ValueError, match="unknown key 'sclae'"):
        short_video.get_config("sclae=pod")


@pytest.mark.parametrize("arg", ["", "smoke", "scale=pod", "scale=pod,frames=128",
                                 "ratio=4,compressor=uniform_frames"])
@pytest.mark.parametrize("module", ["short_video", "long_video"])
def test_every_shipped_config_variant_validates(module, arg):
    config = importlib.import_module(f"configs.{module}").get_config(arg)
    config_lib.validate(config)


def test_a_reports_command_line_names_the_flags_given_and_no_others():
    from absl import flags as absl_flags

    from frejax import cli

    values = absl_flags.FlagValues()
    absl_flags.DEFINE_string("out", "workdirs/x", "", flag_values=values)
    absl_flags.DEFINE_list("ratios", ["8", "10"], "", flag_values=values)
    absl_flags.DEFINE_integer("frames", 32, "", flag_values=values)
    values(["prog", "--ratios=4,8", "--out=docs/x"])
    assert cli.command_line("frejax.studies.analyze", ("frames", "ratios", "out"), values) == (
        "python -m frejax.studies.analyze --ratios=4,8 --out=docs/x")
