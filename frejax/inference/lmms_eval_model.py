r"""frejax as a model of lmms-eval 0.7.3: ``--model frejax``.

    pip install --no-deps lmms-eval==0.7.3 && pip install -e ".[lmms_eval]"
    python -m lmms_eval --model frejax \
        --model_args config=configs/llava_onevision.py:llava=/models/llava-ov-7b,compressor=fre_res_frames,ratio=10 \
        --tasks videomme --batch_size 1 --log_samples --output_path results

``config`` is a frejax config as ``--config`` takes it (``file.py:args``; lmms-eval splits
``--model_args`` at commas, so the config's own arguments after the first follow as model
arguments: ``compressor``, ``ratio``, ``frames``, or quote the whole value). Other model
arguments: ``checkpoint`` (a frejax run whose params replace the config's, as
``frejax.inference.benchmark_eval --checkpoint``), ``batch_size`` (prompts per step; 0:
the config's), ``sampling`` / ``resize`` (frame sampling; lmms-eval's ``linspace``,
LLaVA-OneVision's ``stretch``).

lmms-eval builds each prompt and scores each reply with the task's own functions; frejax
decodes the video the task names, compresses its tokens once per video, and answers the
prompt through the same path as ``frejax.inference.benchmark_eval`` (``answer_all``), so
the two give the same replies on the same documents. A video that cannot be decoded gets
an empty reply (scored as a miss, the way lmms-eval scores a reply with no option), and
is named in a warning with the count of such videos. Registered through the
``lmms_eval.models`` entry point in ``pyproject.toml``.
"""

from __future__ import annotations

import collections
from typing import Any

import jax
from absl import logging
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest

from data_pipelines import video_decode
from frejax import config_lib
from frejax.inference import benchmark_eval

NAME = "frejax"
# Config arguments lmms-eval separates from ``config`` at its commas.
CONFIG_ARGS = ("compressor", "ratio", "frames", "size", "llava", "qwen", "lora")


def manifest() -> ModelManifest:
    """The entry point's payload: lmms-eval's registry record of this model."""
    return ModelManifest(model_id=NAME, simple_class_path=f"{__name__}.Frejax")


def config_spec(config: str, **args: Any) -> str:
    """``config`` with the config arguments that came as separate model arguments."""
    extra = ",".join(f"{k}={v}" for k, v in args.items())
    if not extra:
        return config
    return config + ("," if ":" in config else ":") + extra


class Frejax(lmms):
    """A frejax model in lmms-eval: ``generate_until`` only (video QA answers greedily)."""

    def __init__(self, config: str, checkpoint: str | None = None, batch_size: int | str = 0,
                 sampling: str = "linspace", resize: str = "stretch", **kwargs: Any):
        super().__init__()
        args = {k: kwargs.pop(k) for k in CONFIG_ARGS if k in kwargs}
        unknown = set(kwargs) - {"device", "device_map"}   # lmms-eval's own, unused on JAX
        if unknown:
            raise ValueError(f"--model_args: {sorted(unknown)} are not arguments of the frejax"
                             f" model; it takes config, checkpoint, batch_size, sampling,"
                             f" resize and the config's {', '.join(CONFIG_ARGS)}")
        self.config = config_lib.load(config_spec(config, **args))
        config_lib.validate(self.config)
        self.checkpoint = checkpoint
        # lmms-eval's --batch_size may be "auto": the config's eval.batch_size then.
        self.batch_size_per_step = 0 if str(batch_size).startswith("auto") else int(batch_size)
        self.sampling = video_decode.FrameSampling(
            num_frames=self.config.data.num_frames, image_size=self.config.data.image_size,
            mode=sampling, resize=resize)
        self._answerers: dict[int, benchmark_eval.BenchmarkAnswerer] = {}
        self._rank, self._world_size = jax.process_index(), jax.process_count()

    def answerer(self, max_new_tokens: int) -> benchmark_eval.BenchmarkAnswerer:
        """The model with a decoder of ``max_new_tokens`` steps (built once per length)."""
        if max_new_tokens not in self._answerers:
            self._answerers[max_new_tokens] = benchmark_eval.build(
                self.config, self.checkpoint, self.batch_size_per_step, max_new_tokens)
        return self._answerers[max_new_tokens]

    def generate_until(self, requests) -> list[str]:
        """Replies in request order: requests grouped by generation length, each group
        answered in batches of static shape."""
        groups: dict[int, list[int]] = collections.defaultdict(list)
        items: list[tuple[str, str]] = []
        for i, request in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            if len(visuals) != 1 or not isinstance(visuals[0], str):
                raise ValueError(f"frejax model: task {task!r} gives {len(visuals)} visuals for"
                                 f" doc {doc_id}; it answers about one video file per question")
            items.append((visuals[0], context))
            groups[int(gen_kwargs.get("max_new_tokens", 16))].append(i)
        replies = [""] * len(requests)
        skipped = 0
        for max_new, indices in groups.items():
            out = benchmark_eval.answer_all(self.answerer(max_new), [items[i] for i in indices],
                                            self.sampling, desc="frejax")
            for i, reply in zip(indices, out["replies"]):
                replies[i] = "" if reply is None else reply
                skipped += reply is None
                self.cache_hook.add_partial("generate_until", requests[i].args[:2], replies[i])
        if skipped:
            logging.warning("frejax model: %d questions got an empty reply (videos that could"
                            " not be decoded, named above)", skipped)
        return replies

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("frejax model: multi-round generation is not supported")

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        raise NotImplementedError("frejax model: loglikelihood tasks are not supported;"
                                  " video QA tasks generate")
