"""Using a trained run from Python: `sashimi_jax.load(workdir)` -> `TrainedModel`.

    import sashimi_jax
    run = sashimi_jax.load("runs/demo")                 # latest checkpoint ("best" or a step too)
    scores = run.score(audio, sample_rate_hz=44100)     # audio: float (frames, channels)
    clips = run.generate(num_samples=2, seconds=1.0)    # float32 (2, frames, channels)

`score` encodes the audio exactly as training did (the run's rate, channels, normalisation,
quantisation, interleaving: see `evaluate`) and returns bits per token (and per channel, per
frame); `generate` samples with the compiled recurrent sampler and decodes with the training
quantizer. Both run on one local device.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

from sashimi_jax.data import stereo


@dataclasses.dataclass
class TrainedModel:
  """A checkpoint's model with its config.

  Attributes:
    workdir: the training run's directory.
    step: the checkpoint's step.
    config: the run's ConfigDict (as saved with the checkpoint).
    model: the `SaShiMiLM` with the checkpoint's parameters.
  """

  workdir: str
  step: int
  config: Any
  model: Any

  @property
  def sample_rate_hz(self) -> int:
    return int(self.config.dataset.sample_rate)

  @property
  def channels(self) -> int:
    return stereo.num_channels(bool(self.config.dataset.is_stereo))

  def score(self, audio: np.ndarray, *, sample_rate_hz: Optional[int] = None,
            batch_size: int = 8) -> dict[str, float]:
    """Negative log-likelihood of `audio` under the model, in the run's data settings.

    The audio is cut into clips of `dataset.sample_len` frames like training data (a tail
    shorter than a clip is dropped, unless the audio is shorter than one clip: then it is padded).

    Args:
      audio: float (frames,) or (frames, channels) in [-1, 1] (or integer PCM).
      sample_rate_hz: its rate (default the model's); other rates are resampled (polyphase).
      batch_size: clips scored together.

    Returns:
      {"bits_per_token", "bits_per_frame", "total_bits", "tokens", "clips"} and, for stereo,
      "bits_per_token_left" / "bits_per_token_right".

    Raises:
      ValueError: audio the run cannot use (e.g. mono audio for a stereo run without
        `dataset.mono_to_stereo="duplicate"`).
    """
    from sashimi_jax import evaluate  # pylint: disable=g-import-not-at-top
    from sashimi_jax.data import audio as audio_lib  # pylint: disable=g-import-not-at-top

    array = np.asarray(audio)
    if array.ndim == 1:
      array = array[:, None]
    rate = int(sample_rate_hz or self.sample_rate_hz)
    dataset = self.config.dataset
    reader = audio_lib.SequenceReader([array], rate)
    info = reader.probe(0)
    audio_lib.check_compatible(
        info, sample_rate=self.sample_rate_hz, is_stereo=bool(dataset.is_stereo),
        resample=True, mono_to_stereo=str(dataset.get("mono_to_stereo", "error")))
    clips = audio_lib.AudioClipSource(reader, [info], sample_len=int(dataset.sample_len),
                                      sample_rate=self.sample_rate_hz,
                                      is_stereo=bool(dataset.is_stereo))
    result = evaluate.score_source(self.model, self.config, clips, batch_size=batch_size,
                                   show_progress=False)
    result.pop("files")
    return result

  def generate(self, num_samples: int = 1, *, seconds: float = 1.0, temperature: float = 1.0,
               top_p: float = 1.0, seed: int = 0, batch_size: Optional[int] = None,
               devices: Optional[Sequence[Any]] = None) -> np.ndarray:
    """Generates clips from scratch.

    Args:
      num_samples: clips to generate; clip i depends only on (seed, i) and the rows each device
        computes together (XLA may round a row differently in another per-device batch).
      seconds: length of each clip.
      temperature, top_p: sampling controls (see `heads.sample_tokens`).
      seed: PRNG seed.
      batch_size: clips generated together (default all).
      devices: None (JAX's default device), or devices of this process to split every batch
        over, e.g. `jax.local_devices()`, as `sample.py` does; the batch is rounded up to a
        multiple of their number (the extra rows are dropped). On a CPU,
        `sashimi_jax.cpu_devices.configure(None, os.environ)` before JAX starts makes one
        device per core.

    Returns:
      float32 (num_samples, frames, channels) in [-1, 1] at `sample_rate_hz`.
    """
    import jax  # pylint: disable=g-import-not-at-top
    from sashimi_jax import config as config_lib  # pylint: disable=g-import-not-at-top
    from sashimi_jax import sampling  # pylint: disable=g-import-not-at-top
    from sashimi_jax.data import layout  # pylint: disable=g-import-not-at-top
    from sashimi_jax.data import pipeline  # pylint: disable=g-import-not-at-top

    frames = int(round(seconds * self.sample_rate_hz))
    if num_samples < 1 or frames < 1:
      raise ValueError(f"need num_samples >= 1 and seconds giving >= 1 frame, got {num_samples}"
                       f" and {seconds}.")
    batch_size = min(int(batch_size or num_samples), num_samples)
    mesh = None
    rows = batch_size
    if devices is not None:
      from sashimi_jax import sharding  # pylint: disable=g-import-not-at-top
      devices = list(devices)
      if not devices or any(d.process_index != jax.process_index() for d in devices):
        raise ValueError(f"devices must be a non-empty list of this process's devices, got "
                         f"{devices}.")
      mesh = sharding.create_mesh(devices)
      rows = -(-batch_size // len(devices)) * len(devices)
    dataset = self.config.dataset
    # The training layout at this length (e.g. one whole clip for `blocking`), cut afterwards.
    stream_frames = layout.generated_frames(
        frames, is_stereo=bool(dataset.is_stereo), strategy=dataset.interleaving_strategy,
        sample_len=int(dataset.sample_len))
    key = jax.random.key(seed)
    recurrence = sampling.recurrence_constants(self.model, mesh)  # once, not per batch
    tokens = []
    for first in range(0, num_samples, batch_size):
      out = sampling.generate(
          self.model, key, batch_size=rows, new_tokens=stream_frames * self.channels,
          temperature=temperature, top_p=top_p, first_sample_index=first, mesh=mesh,
          recurrence=recurrence, **config_lib.head_args(self.config))
      tokens.append(np.asarray(out["tokens"])[:min(batch_size, num_samples - first)])
    return layout.trim_frames(
        np.asarray(pipeline.decode_tokens(np.concatenate(tokens), dataset), np.float32), frames)


def load(workdir: str, step: str | int | None = "latest") -> TrainedModel:
  """Loads a training run's checkpoint: `step` is "latest", "best" or a step number.

  Raises:
    FileNotFoundError: no checkpoint (or not that step) in `workdir`.
  """
  from sashimi_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from sashimi_jax import evaluate  # pylint: disable=g-import-not-at-top
  config, model, step = checkpoint.load_for_inference(workdir,
                                                      evaluate.resolve_step(workdir, step))
  return TrainedModel(workdir=workdir, step=step, config=config, model=model)
