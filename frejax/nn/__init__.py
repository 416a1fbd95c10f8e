"""Building blocks with parameters or logical sharding: dense layers, norms, attention, scan/remat."""
