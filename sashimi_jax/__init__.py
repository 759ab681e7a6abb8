"""sashimi-jax: SaShiMi autoregressive raw-audio models in JAX/Flax, with stereo as data.

`sashimi_jax.load(workdir)` loads a trained run for scoring and generating (see `api.py`).
"""

__version__ = "0.1.0"


def load(workdir: str, step="latest"):
  """A training run's checkpoint as a `sashimi_jax.api.TrainedModel` (`score`, `generate`).

  Args:
    workdir: the run's --workdir.
    step: "latest", "best" (lowest validation bits in metrics.jsonl) or a step number.
  """
  from sashimi_jax import api  # pylint: disable=g-import-not-at-top  (keeps the import light)
  return api.load(workdir, step)
