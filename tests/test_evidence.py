"""The evidence sweep end to end on the smoke preset: runs, report, plots, resume."""

import os
import subprocess
import sys

from frejax.benchmarks import evidence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_full_sweep_plan_covers_every_method_ratio_length_and_ablation():
    runs = evidence.plan_runs(evidence.PRESETS["full"])
    names = {r.name for r in runs}
    assert len(names) == len(runs)
    for length in ("short", "long"):
        assert f"{length}-full" in names
        for ratio in (2, 4, 8, 16):
            assert {f"{length}-{m}-x{ratio}" for m in evidence.METHODS if m != "full"} <= names
        assert f"{length}-full-x{ratio}" not in names  # full tokens: one run, ratio 0
    ablations = [r for r in runs if r.ablation]
    assert len(ablations) == len(evidence.ABLATIONS)  # each names the paper split
    assert all(r.length == "long" and r.ratio == 8 and r.method == "fre_res" for r in ablations)
    for key, length, flags in (("background", "long", "--config.data.synthetic.background_noise=clip"),
                               ("windows", "short", "--config.compressor.fre_res.time_windows=1")):
        study = [r for r in runs if r.study == key]
        assert {r.method for r in study} == {"fre_res", "temporal_dct_only"}
        assert all(r.flags[-1] == flags and (r.length, r.ratio) == (length, 8) for r in study)
    # A slice without a study's or the ablations' budget plans none of their runs.
    slice_ = evidence.dataclasses.replace(evidence.PRESETS["full"], lengths=("long",),
                                          ratios=(2, 4))
    assert all(r.is_main for r in evidence.plan_runs(slice_))
    short = evidence.dataclasses.replace(evidence.PRESETS["full"], lengths=("short",),
                                         methods=("full", "fre_res"))
    assert {r.name for r in evidence.plan_runs(short) if not r.is_main} == {
        "short-one-time-window-fre_res-x8"}


def test_run_config_applies_the_runs_flags():
    run = next(r for r in evidence.plan_runs(evidence.PRESETS["full"]) if r.study == "background")
    config = evidence._run_config(run, evidence.PRESETS["full"])
    assert config.data.synthetic.background_noise == "clip"
    assert config.compressor.name == run.method and config.compressor.ratio == 8


def test_smoke_sweep_writes_tables_and_plots_and_resumes(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    cmd = [sys.executable, "-m", "frejax.benchmarks.evidence", "--preset=smoke",
           f"--out={tmp_path}", f"--report_dir={tmp_path / 'report'}"]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    report = (tmp_path / "report" / "results.md").read_text()
    for row in ("| `fre_res` |", "| `uniform_frames` |", "absorbed only (no residual tokens)",
                "Residual energy against DCT coefficient index", "## Static background",
                "| `fre_res` | static |", "## Time windows",
                "| `fre_res` | paper split, one time window |",
                "| encoder, noise every frame |",
                "| encoder, static background |", "| pixels, static background |"):
        assert row in report, report
    assert "n/a" not in report and "not run" not in report, report
    for png in ("accuracy_short.png", "energy_spectrum.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A second invocation finds every results.json and trains nothing.
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[1/" not in again.stdout, again.stdout


def test_main_job_seeds_pairs_each_seed_with_the_baselines_and_reports_the_interval():
    from frejax.benchmarks import main_job_seeds

    def row(acc, motion):
        return dict(accuracy=acc, accuracy_by_family=dict(motion=motion, static=1.0),
                    step=10, visual_tokens_per_video=64, full_visual_tokens_per_video=512)

    rows = {0: row(0.9, 0.8), 1: row(0.7, 0.5), 2: row(0.8, 0.6)}
    base = {0: row(0.8, 0.6), 1: row(0.7, 0.6), 2: row(0.6, 0.3), 3: row(0.5, 0.5)}
    diff = main_job_seeds.paired(rows, base)
    assert diff["seeds"] == [0, 1, 2]  # seed 3 finished at the baseline only
    assert [round(v, 6) for v in diff["accuracy"]["per_seed"].values()] == [0.1, 0.0, 0.2]
    assert abs(diff["accuracy"]["mean"] - 0.1) < 1e-9
    # Student t with 2 degrees of freedom: 4.303 * sd(0.1, 0, 0.2) / sqrt(3).
    assert abs(diff["accuracy"]["half_width"] - 4.303 * 0.1 / 3 ** 0.5) < 1e-6
    assert abs(diff["by_family"]["motion"]["mean"] - (0.2 - 0.1 + 0.3) / 3) < 1e-9
    assert diff["by_family"]["static"]["half_width"] == 0.0
    text = main_job_seeds.paired_markdown(main_job_seeds.summarize(rows),
                                          main_job_seeds.summarize(base), diff, "abc1234")
    assert "| 2 | 0.600 | 0.800 | +0.200 | +0.30 | +0.00 |" in text
    assert "| mean ± 95% | | | +0.100 ± 0.248 |" in text
