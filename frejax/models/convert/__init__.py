"""Converters from released checkpoints (Hugging Face folders, GGUF, ONNX) into frejax params."""
