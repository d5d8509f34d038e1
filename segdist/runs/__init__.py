"""A run directory and what it holds: config, dataset manifest, checkpoints, the EMA of the weights.

    run.py           Run / load_run: the model restored from a checkpoint, `Run.predict(image)`
    checkpoints.py   complete-or-absent checkpoints written by every rank, best/last resolution
    ema.py           the exponential moving average of the weights
"""
