"""Benchmarks: pooler and CNN figures (``measure``) and the accelerator check
(``accelerator_check``), run by ``python -m train.bench``."""
