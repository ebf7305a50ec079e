"""Data sources, label-noise models and the in-memory loader."""
