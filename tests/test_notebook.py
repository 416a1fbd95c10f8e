"""The Colab demo notebook executes top to bottom (its CPU smoke setting)."""

import os

import nbclient
import nbformat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "colab_tpu_demo.ipynb")


def test_colab_demo_notebook_executes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = dict(os.environ, FREJAX_NOTEBOOK_SMOKE="1", FREJAX_NOTEBOOK_WORKDIR=str(tmp_path),
               JAX_PLATFORMS="cpu",
               # One CPU device; optimisation level 0 halves the compile time.
               XLA_FLAGS="--xla_backend_optimization_level=0")
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": REPO}})
    client.execute(env=env)

    outputs = {i: cell.get("outputs", []) for i, cell in enumerate(nb.cells)
               if cell.cell_type == "code"}
    text = "\n".join(o.get("text", "") for outs in outputs.values() for o in outs
                     if o.get("output_type") == "stream")
    images = [o for outs in outputs.values() for o in outs
              if "image/png" in o.get("data", {})]
    assert "compressor fre_res" in text and "accuracy" in text
    assert "uniform_frames" in text  # the baseline's points are printed beside Fre-Res's
    assert len(images) == 3  # the video, accuracy against tokens, the energy spectrum
    for name in ("fre_res_r8", "uniform_frames_r8"):
        assert (tmp_path / name / "results.json").exists(), name
