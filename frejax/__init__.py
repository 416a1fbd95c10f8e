"""frejax: Fre-Res video token compression for video MLLMs in JAX/Flax."""

__version__ = "0.1.0"
