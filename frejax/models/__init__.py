"""Model modules: per-frame ViT encoder, projector, decoder LLM and the video MLLM."""

from frejax.models.llm import LLM, apply_rope
from frejax.models.projector import Projector
from frejax.models.video_mllm import VideoMLLM, splice_indices
from frejax.models.vit import ViT
