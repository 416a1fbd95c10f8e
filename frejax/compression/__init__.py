"""Video token compressors: Fre-Res and the matched-budget baselines."""

from frejax.compression.base import (CompressedTokens, Compressor, VideoGeometry, build,
                                     concat_chunks, get,
                                     names, register, resolve_budget, section_options,
                                     sections, unregister)
from frejax.compression import baselines  # noqa: F401  (registers the baselines)
from frejax.compression import temporal_baselines  # noqa: F401  (registers the temporal ones)
from frejax.compression import fre_res  # noqa: F401  (registers fre_res and its ablations)
from frejax.compression import energy  # noqa: F401
