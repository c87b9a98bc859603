"""Training tool for the jaxpool study: ``python -m train.main --pooler tdgs``.

Importing it changes no global state; the command-line entry points choose their XLA options
explicitly (:func:`train.cli.run_main`).
"""
