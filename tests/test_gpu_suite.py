"""The one-GPU suite runs end to end in its tiny shape on CPU and writes its rows."""

import json

from frejax.benchmarks import gpu_suite


def test_gpu_suite_tiny_shape_writes_full_and_fre_res_rows(tmp_path):
    out = str(tmp_path / "report")
    result = gpu_suite.main(["--shape=tiny", "--dtype=float32", "--repeats=1", f"--out={out}"])
    rows = {r["setting"]: r for r in result["rows"]}
    assert set(rows) == {"full", "fre_res 8x", "fre_res 16x"}
    assert rows["full"]["visual_tokens"] == 8 * rows["fre_res 8x"]["visual_tokens"]
    for r in rows.values():
        assert r["ttft_s"] > 0 and r["train_s"] > 0 and r["train_flops"] > 0
    # Fewer visual tokens: a smaller compiled prefill and train step.
    assert rows["fre_res 8x"]["ttft_memory_bytes"] < rows["full"]["ttft_memory_bytes"]
    assert rows["fre_res 8x"]["train_flops"] < rows["full"]["train_flops"]
    with open(out + ".json") as f:
        assert json.load(f)["gpu_suite"]["shape"] == "tiny"
    with open(out + ".md") as f:
        assert "## GPU suite" in f.read()
