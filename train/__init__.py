"""Training tool for the jaxpool study: ``python -m train.main --pooler tdgs``."""
