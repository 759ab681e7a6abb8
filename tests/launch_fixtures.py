"""Flags for launch.py runs in tests: a small stereo model on 64-token streams.

A constant schedule, so that num_steps (which tests change between runs) does not enter the
compiled step and the compilation cache is shared. Tests append their own checkpoint and step
flags.
"""

SMALL_RUN_FLAGS = [
    "--config=configs/stereo_temporal.py:tiny",
    "--config.dataset.sample_len=32",
    "--config.model.n_layers=1",
    "--config.model.d_model=8",
    "--config.model.pool=(2,)",
    "--config.model.d_state=4",
    "--config.model.ff=1",
    "--config.train.batch_size=2",
    "--config.train.schedule=constant",
    "--config.train.warmup_steps=2",
    "--config.train.log_every_steps=1",
    "--config.train.eval_every_steps=1000",
    "--config.train.eval_batches=1",
]
