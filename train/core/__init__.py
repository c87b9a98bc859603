"""The training core: config checks, data, the CNN, steps, the compiled loop, checkpoints and a
run directory's files.  ``loop.train_and_evaluate`` runs one whole run."""
