"""An untrained but complete checkpoint of a very small stereo model, written without training.

Enough for the code that loads a run (sample.py, evaluate, sashimi_jax.load): config, parameters
and data-iterator position are saved exactly as launch.py saves them.
"""

import os
import runpy

from sashimi_jax import checkpoint as checkpoint_lib
from sashimi_jax import sharding as sharding_lib
from sashimi_jax import state as state_lib
from sashimi_jax.data import pipeline
import audio_fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(data_path):
  """configs/stereo_temporal.py:tiny shrunk like launch_fixtures.SMALL_RUN_FLAGS."""
  config = runpy.run_path(os.path.join(ROOT, "configs", "stereo_temporal.py"))["get_config"]("tiny")
  config.dataset.path = str(data_path)
  config.dataset.sample_len = 32
  config.model.update(n_layers=1, d_model=8, pool=(2,), d_state=4, ff=1)
  config.train.batch_size = 2
  return config


def write_checkpoint(root, step: int = 1):
  """Writes root/data (3 stereo files at 16 kHz) and a checkpoint in root/run; returns the run."""
  data = os.path.join(str(root), "data")
  for i in range(3):
    audio_fixtures.write_audio(os.path.join(data, f"clip{i}.wav"), 800, channels=2,
                               sample_rate=16000, seed=i)
  config = small_config(data)
  workdir = os.path.join(str(root), "run")
  mesh = sharding_lib.create_mesh()
  _, state, _ = state_lib.init_train_state(config, mesh)
  iterator = pipeline.create_train_iterator(config.dataset, global_batch_size=2, seed=0)
  ckpt = checkpoint_lib.Checkpointer(workdir)
  ckpt.save(step, state, iterator, config)
  ckpt.close()
  return workdir
