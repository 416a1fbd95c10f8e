"""Video token compressors: Fre-Res and the matched-budget baselines."""

from frejax.compression.base import (CompressedTokens, Compressor, VideoGeometry, build, get,
                                     names, register, resolve_budget)
