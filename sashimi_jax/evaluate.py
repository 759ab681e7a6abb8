"""Scoring a trained checkpoint: bits per token, per frame, per channel and per file.

`evaluate_checkpoint(workdir, step=..., split=... | audio_path=...)` loads a checkpoint, cuts the
audio into clips exactly as training does (the run's own `config.dataset`: rate, channels,
normalisation, quantisation, interleaving), runs the convolution-mode model on them and sums each
clip's negative log-likelihood per channel. The clips are

  * a split of the run's data (`split="test"`, `"valid"` or `"train"`): every clip once, in order;
    with `max_batches=K` instead the clips the training loop's evaluation reads (K batches of
    `train.batch_size`, cycled if the split has fewer clips), so the result equals its
    `eval/bits_per_token` at that step;
  * or every file of `audio_path` (a folder or a file), not split.

`resolve_step` turns `latest`, `best` (the saved step with the lowest `eval/bits_per_token` in
`metrics.jsonl`) or a number into a checkpoint step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Sequence

import jax
import numpy as np
import tqdm

from sashimi_jax import metrics as metrics_lib
from sashimi_jax.data import stereo

LN2 = math.log(2.0)
EVAL_METRIC = "eval/bits_per_token"
RESULTS_DIR = "evaluation"


def saved_steps(workdir: str) -> list[int]:
  """The checkpoint steps under `workdir/checkpoints` (sorted; [] if none)."""
  from sashimi_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  directory = checkpoint_lib.checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit()
                and os.path.isdir(os.path.join(directory, name)))


def resolve_step(workdir: str, which: str | int | None) -> int:
  """The checkpoint step meant by `which`: `latest` (or None), `best`, or a step number.

  `best` is the saved step whose last logged `eval/bits_per_token` (metrics.jsonl) is lowest.

  Raises:
    FileNotFoundError: no checkpoint, or not the asked step.
    ValueError: `which` is not understood, or `best` has no evaluated saved step.
  """
  steps = saved_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"No checkpoints in {workdir!r} (looked in "
                            f"{os.path.join(workdir, 'checkpoints')}); train first with launch.py.")
  which = "latest" if which is None else str(which).strip().lower()
  if which == "latest":
    return steps[-1]
  if which == "best":
    bits = {}
    for event in metrics_lib.read_metrics(workdir):
      if EVAL_METRIC in event:
        bits[int(event["step"])] = float(event[EVAL_METRIC])  # the last event of a step wins.
    evaluated = {s: bits[s] for s in steps if s in bits}
    if not evaluated:
      raise ValueError(f"No saved step of {workdir!r} has an {EVAL_METRIC} in metrics.jsonl "
                       f"(saved steps: {steps}); pass --step=latest or a step number.")
    return min(evaluated, key=lambda s: (evaluated[s], s))
  if not which.isdigit():
    raise ValueError(f"--step={which!r} must be 'latest', 'best' or a step number.")
  if int(which) not in steps:
    raise FileNotFoundError(f"No checkpoint for step {which} in {workdir!r}; saved steps: {steps}.")
  return int(which)


def clip_order(num_clips: int, batch_size: int, max_batches: int | None) -> np.ndarray:
  """Clip indices to score, in batch order.

  `max_batches` None: every clip once. Otherwise the training loop's evaluation order
  (`pipeline.EvalBatches`): `min(max(1, num_clips // batch_size), max_batches)` batches of
  consecutive clips, wrapping around a split smaller than one batch.
  """
  if max_batches is None:
    return np.arange(num_clips)
  num_batches = min(max(1, num_clips // batch_size), max_batches)
  return np.arange(num_batches * batch_size) % num_clips


@dataclasses.dataclass
class Scores:
  """Summed bits and token counts: index 0 = left (or mono) positions, 1 = right."""

  bits: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(2, np.float64))
  tokens: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(2, np.float64))

  def add(self, bits: np.ndarray, tokens: np.ndarray) -> None:
    self.bits += bits
    self.tokens += tokens

  def summary(self, is_stereo: bool) -> dict[str, float]:
    """bits_per_token, bits_per_frame, total_bits and tokens (+ per channel for stereo)."""
    total_tokens = float(self.tokens.sum())
    out = {"bits_per_token": float(self.bits.sum() / total_tokens),
           "bits_per_frame": float(self.bits.sum() / total_tokens) * stereo.num_channels(is_stereo),
           "total_bits": float(self.bits.sum()), "tokens": int(total_tokens)}
    if is_stereo:
      out["bits_per_token_left"] = float(self.bits[0] / self.tokens[0])
      out["bits_per_token_right"] = float(self.bits[1] / self.tokens[1])
    return out


def make_clip_scorer(model, config):
  """A jitted function: tokens y int32 (B, T) -> per-clip (bits (B, 2), tokens (B, 2)).

  The model input is y shifted right behind the zero token, as in training (`shift_right`).
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from sashimi_jax import train  # pylint: disable=g-import-not-at-top
  from sashimi_jax.data import quantize  # pylint: disable=g-import-not-at-top

  graphdef, params = nnx.split(model)
  onehot = jax.nn.one_hot(jnp.asarray(train.channel_map(config.dataset)), 2, dtype=jnp.float32)
  zero = quantize.zero_token(int(config.dataset.bits))

  @jax.jit
  def score(params, y):
    x = jnp.concatenate([jnp.full_like(y[:, :1], zero), y[:, :-1]], axis=1)
    outputs = nnx.merge(graphdef, params)(x, deterministic=True)
    bits = train.token_bits(outputs, y, config)  # (B, T)
    return jnp.einsum("bt,tc->bc", bits, onehot), jnp.broadcast_to(onehot.sum(0), (y.shape[0], 2))

  return lambda y: jax.device_get(score(params, y))


def score_clips(model, config, clips, order: Sequence[int], *, batch_size: int,
                show_progress: bool = True, description: str = "evaluating"):
  """Scores clips `order` of an `AudioClipSource` in batches of `batch_size`.

  Returns:
    (bits (N, 2) float64, tokens (N, 2) float64) per entry of `order`, channel 0 = left/mono.
  """
  from sashimi_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  scorer = make_clip_scorer(model, config)
  order = np.asarray(order)
  bits = np.zeros((len(order), 2), np.float64)
  tokens = np.zeros((len(order), 2), np.float64)
  with tqdm.tqdm(total=len(order), unit="clip", desc=description,
                 disable=not show_progress) as bar:
    for first in range(0, len(order), batch_size):
      rows = order[first:first + batch_size]
      # The last batch is padded with its first clip, so one compiled shape serves every batch.
      padded = np.concatenate([rows, np.full(batch_size - len(rows), rows[0])])
      y = np.stack([pipeline.encode_clip(clips[int(i)], config.dataset) for i in padded])
      batch_bits, batch_tokens = scorer(y.astype(np.int32))
      bits[first:first + len(rows)] = batch_bits[:len(rows)]
      tokens[first:first + len(rows)] = batch_tokens[:len(rows)]
      bar.update(len(rows))
  return bits, tokens


def clip_source(config, *, split: str | None = None, audio_path: Any = None):
  """The clips to score: one split of the run's data, or every item of `audio_path` (unsplit)."""
  from sashimi_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  settings = pipeline.DataSettings.from_config(config.dataset)
  if audio_path is None:
    return pipeline.build_clip_source(settings, split)
  settings = dataclasses.replace(settings, valid_fraction=0.0, test_fraction=0.0)
  return pipeline.build_clip_source(settings, "train", source=audio_path)


def score_source(model, config, clips, *, batch_size: int, max_batches: int | None = None,
                 show_progress: bool = True, description: str = "evaluating") -> dict[str, Any]:
  """Scores an `AudioClipSource`: overall, per channel and per item (file).

  Returns:
    {"bits_per_token", "bits_per_frame", "total_bits", "tokens", ["bits_per_token_left",
    "bits_per_token_right"], "clips", "files": [{"file", "clips", "bits_per_token", ...}]}.
  """
  if len(clips) == 0:
    raise ValueError("Nothing to evaluate: the source has no clips.")
  is_stereo = bool(config.dataset.is_stereo)
  order = clip_order(len(clips), batch_size, max_batches)
  bits, tokens = score_clips(model, config, clips, order, batch_size=batch_size,
                             show_progress=show_progress, description=description)
  overall = Scores()
  per_item: dict[int, Scores] = {}
  counts: dict[int, int] = {}
  for i, clip in enumerate(order):
    item, _ = clips.locate(int(clip))
    overall.add(bits[i], tokens[i])
    per_item.setdefault(item, Scores()).add(bits[i], tokens[i])
    counts[item] = counts.get(item, 0) + 1
  files = [{"file": clips.infos[item].name, "clips": counts[item],
            **per_item[item].summary(is_stereo)} for item in sorted(per_item)]
  return {**overall.summary(is_stereo), "clips": int(len(order)), "files": files}


def evaluate_checkpoint(workdir: str, *, step: str | int | None = "latest",
                        split: str | None = "test", audio_path: Any = None,
                        batch_size: int | None = None, max_batches: int | None = None,
                        show_progress: bool = True) -> dict[str, Any]:
  """Loads a checkpoint of `workdir` and scores a split of its data or a folder of audio.

  Args:
    workdir: the training run's --workdir.
    step: `latest`, `best` or a step number (see `resolve_step`).
    split: `test`, `valid` or `train` (ignored when `audio_path` is given).
    audio_path: a folder or file of audio to score instead of a split (every file, unsplit).
    batch_size: clips per batch (default the run's `train.batch_size`).
    max_batches: None = every clip once; K = the training loop's evaluation clips (see
      `clip_order`).
    show_progress: draw a tqdm bar.

  Returns:
    `score_source`'s dict plus "step", "workdir", "data" (the split or the path), "sample_rate".
  """
  from sashimi_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  step = resolve_step(workdir, step)
  config, model, step = checkpoint_lib.load_for_inference(workdir, step)
  clips = clip_source(config, split=split, audio_path=audio_path)
  batch_size = int(batch_size or config.train.batch_size)
  data = split if audio_path is None else os.fspath(audio_path)
  result = score_source(model, config, clips, batch_size=batch_size, max_batches=max_batches,
                        show_progress=show_progress, description=f"evaluating {data}")
  return {"workdir": os.path.abspath(workdir), "step": int(step), "data": data,
          "sample_rate": int(config.dataset.sample_rate), **result}


def tag(result: dict[str, Any]) -> str:
  """The name results are filed under: the split, or `audio_<folder name>`."""
  data = result["data"]
  if data in ("test", "valid", "validation", "train"):
    return data
  name = os.path.basename(os.path.normpath(data)) or "audio"
  return "audio_" + "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_results(result: dict[str, Any], output_json: str | None = None) -> str:
  """Writes `result` as JSON (default WORKDIR/evaluation/<tag>_step<N>.json) and its totals to
  TensorBoard (WORKDIR/tensorboard, tags `evaluate/<tag>/<metric>` at the step).

  Returns:
    The JSON path.
  """
  workdir, name = result["workdir"], tag(result)
  path = output_json or os.path.join(workdir, RESULTS_DIR, f"{name}_step{result['step']}.json")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  except ImportError:
    return path
  writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
  for key, value in result.items():
    if key.startswith("bits_per_") and isinstance(value, float):
      writer.add_scalar(f"evaluate/{name}/{key}", value, int(result["step"]))
  writer.close()
  return path


def format_report(result: dict[str, Any]) -> str:
  """Console lines: the totals, then one line per file."""
  head = (f"step {result['step']} on {result['data']}: {result['bits_per_token']:.4f} bits/token"
          f" ({result['bits_per_frame']:.4f} bits/frame")
  if "bits_per_token_left" in result:
    head += (f"; left {result['bits_per_token_left']:.4f}, right "
             f"{result['bits_per_token_right']:.4f} bits/token")
  head += f"), {result['clips']} clips, {result['tokens']} tokens"
  lines = [head]
  for f in result["files"]:
    line = f"  {f['file']}: {f['bits_per_token']:.4f} bits/token"
    if "bits_per_token_left" in f:
      line += f" (left {f['bits_per_token_left']:.4f}, right {f['bits_per_token_right']:.4f})"
    lines.append(line + f", {f['clips']} clips")
  return "\n".join(lines)
