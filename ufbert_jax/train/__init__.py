"""MLM pretraining with the cramming recipe.

    optim.py          the optimizer, the budget schedule and the batch ramp
    steps.py          the sparse-prediction loss and the jitted train and eval steps
    metrics.py        the step-metrics window, throughput (model FLOPs, MFU), metrics.jsonl
    plot.py           loss.png
    mesh.py           jax.distributed, the data-parallel mesh, placing state and batches
    settings.py       the config's numeric settings, checked before anything is written
    checkpointing.py  saving and resuming a run in its workdir
    lock.py           one trainer per workdir (workdir/train.lock)
    inputs.py         the token shards and MLM batches of a config (`make_batches`)
    loop.py           the loop (`train`) and the whole run from a config (`train_and_evaluate`)
    console.py        the closing summary of a run (or that it had finished before)

The package imports nothing itself: optim, steps and metrics need only jax, flax and optax (the throughput
benchmark runs with those alone); loop.py needs the data pipeline, orbax and ml_collections too.
"""
