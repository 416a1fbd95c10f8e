"""Inference: the engine (encode, compress, prefill, decode) and the tools on it."""
