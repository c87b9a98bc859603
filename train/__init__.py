"""Training tool for the jaxpool study: ``python -m train.main --pooler tdgs``."""

from train import xla_cpu

xla_cpu.prefer_xnnpack_convolutions()
xla_cpu.prefer_wide_vectors()
