"""Studies that use the framework and write reports: model-free analysis, natural-video QA."""
