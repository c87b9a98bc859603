"""ml_collections configs for ``python -m train.main --config configs/<name>.py``."""
