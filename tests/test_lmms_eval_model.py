"""frejax inside lmms-eval 0.7.3: ``python -m lmms_eval --model frejax`` on a local tiny task.

lmms-eval's wheel is fetched from the package registry and unpacked (its runtime needs are
the ``lmms_eval`` extra); the task is lmms-eval's own Video-MME (its prompt builder,
answer extraction and aggregation) over the tiny Video-MME fixture folder, read as a local
parquet file. The model is a tiny random LLaVA-OneVision folder with ``fre_res_frames``.
The samples log and the score must equal ``frejax.inference.benchmark_eval``'s on the
same documents.
"""

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

import benchmark_fixtures as fx
import llava_fixtures
from configs import llava_onevision
from data_pipelines import package_assets
from frejax.inference import benchmark_eval

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LMMS_EVAL = "lmms-eval==0.7.3"
TASK = "frejax_tiny_videomme"
CONFIG = "compressor=fre_res_frames,ratio=1.5,frames=3"


@pytest.fixture(scope="module")
def lmms_root():
    return package_assets.wheel_tree(LMMS_EVAL, package_assets.asset_dir("lmms_eval_0.7.3_wheel"))


def _task_folder(root: str, lmms_root: str, parquet: str) -> str:
    """lmms-eval's Video-MME task files, and a task that reads the fixture's parquet."""
    folder = os.path.join(root, "tasks")
    os.makedirs(folder)
    for name in ("utils.py", "videomme.yaml"):
        shutil.copy(os.path.join(lmms_root, "lmms_eval", "tasks", "videomme", name), folder)
    with open(os.path.join(folder, f"{TASK}.yaml"), "w") as f:
        f.write(f"include: videomme.yaml\ntask: {TASK}\ndataset_path: parquet\n"
                "dataset_kwargs:\n  video: true\n  cache_dir: videomme\n"
                f"  data_files:\n    test: {parquet}\n")
    return folder


def _lmms_eval(args: list[str], lmms_root: str, hf_home: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([lmms_root, REPO]), HF_HOME=hf_home,
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", JAX_PLATFORMS="cpu",
               XLA_FLAGS="")   # one CPU device, as the comparison below runs
    return subprocess.run([sys.executable, "-m", "lmms_eval", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_lmms_eval_scores_frejax_as_benchmark_eval_does(tmp_path, lmms_root):
    llava = str(tmp_path / "llava")
    llava_fixtures.tiny_llava(llava, tokenizer=True)
    hf_home = str(tmp_path / "hf")
    data, _ = fx.videomme_folder(os.path.join(hf_home, "videomme"))
    parquet = os.path.join(data, "videomme", "test-00000-of-00001.parquet")
    tasks = _task_folder(str(tmp_path), lmms_root, parquet)
    out = str(tmp_path / "lmms_out")
    proc = _lmms_eval(["--model", "frejax", "--model_args",
                       f"config=configs/llava_onevision.py:llava={llava},{CONFIG}",
                       "--tasks", TASK, "--include_path", tasks, "--batch_size", "2",
                       "--log_samples", "--output_path", out], lmms_root, hf_home)
    assert proc.returncode == 0, proc.stderr[-4000:]
    [results] = glob.glob(f"{out}/**/*_results.json", recursive=True)
    [samples_log] = glob.glob(f"{out}/**/*_samples_{TASK}.jsonl", recursive=True)
    with open(results) as f:
        lmms_score = json.load(f)["results"][TASK]["videomme_perception_score,none"]
    with open(samples_log) as f:
        lmms_samples = sorted((json.loads(line) for line in f), key=lambda s: s["doc_id"])

    c = llava_onevision.get_config(f"llava={llava},{CONFIG}")
    c.mesh.shape = (1, 1, 1)
    ours = benchmark_eval.run(c, "videomme", data, str(tmp_path / "ours"), batch_size=2)
    with open(ours["report"].replace(".json", "_samples.jsonl")) as f:
        our_samples = [json.loads(line) for line in f]
    # Line for line the same samples log: prompt, reply, extraction, per-sample score.
    # One field differs by design: lmms-eval 0.7.3 hashes the request's doc after it has
    # dropped it (every line's doc_hash is sha256("null")); frejax hashes the doc.
    assert len(lmms_samples) == len(our_samples) == 5
    for theirs, mine in zip(lmms_samples, our_samples):
        assert theirs.pop("doc_hash") == hashlib.sha256(b"null").hexdigest()
        mine.pop("doc_hash")
        assert theirs == mine
    # Video-MME's aggregate: lmms-eval in percent, benchmark_eval as a fraction.
    assert lmms_score == pytest.approx(100 * ours["row"]["score"], abs=1e-9)
    # The tiny model answers some questions right and misreads others: the scores above
    # compare extraction on real replies, not five empty ones.
    assert {s["filtered_resps"] for s in our_samples} != {""}


def test_unknown_model_args_are_refused_by_name(lmms_root, monkeypatch):
    """lmms-eval passes --model_args as keywords: a misspelt one is named, not ignored."""
    monkeypatch.syspath_prepend(lmms_root)
    from frejax.inference import lmms_eval_model  # noqa: PLC0415  (needs lmms_eval)

    with pytest.raises(ValueError, match=r"\['temprature'\] are not arguments of the frejax"):
        lmms_eval_model.Frejax(config="configs/llava_onevision.py", temprature=0)
    assert lmms_eval_model.config_spec("configs/x.py", ratio=10) == "configs/x.py:ratio=10"
    assert lmms_eval_model.config_spec("configs/x.py:llava=/m", ratio=10, frames=8) == \
        "configs/x.py:llava=/m,ratio=10,frames=8"
