"""Metric logging: finiteness checks, DIR/metrics.jsonl, TensorBoard (tensorboardX), console.

Every scalar passes `check_finite` before it is written (the error names the metric), so a run
that went wrong stops loudly instead of logging NaN for hours. `metrics.jsonl` holds one JSON
object per log event: {"step": int, "<name>": float, ...} with names such as
`train/bits_per_token`, `eval/bits_per_token`, `eval/bits_per_token_left`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Mapping

from absl import logging
import numpy as np

METRICS_FILE = "metrics.jsonl"


def check_finite(step: int, scalars: Mapping[str, float]) -> None:
  """Raises ValueError naming every non-finite metric in `scalars`."""
  bad = {k: v for k, v in scalars.items() if not math.isfinite(float(v))}
  if bad:
    names = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
    raise ValueError(f"Non-finite metric at step {step}: {names}.")


def read_metrics(workdir: str) -> list[dict]:
  """All events of `workdir/metrics.jsonl`, in file order ([] if the file does not exist)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def drop_events_after(workdir: str, step: int) -> int:
  """Rewrites `workdir/metrics.jsonl` without the events logged after `step`; returns how many.

  A run resumed from a checkpoint at `step` logs steps > `step` again; dropping the interrupted
  run's entries first keeps every step once. The file is replaced atomically.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f if line.strip()]
  kept = []
  for line in lines:
    try:
      if int(json.loads(line)["step"]) <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
    except (ValueError, KeyError, TypeError):  # a line cut by a crash mid-write.
      pass
  if len(kept) == len(lines):
    return 0
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(tmp, path)
  return len(lines) - len(kept)


class MetricWriter:
  """Writes scalars to metrics.jsonl and TensorBoard; audio and images to TensorBoard.

  Only process 0 writes (pass `enabled=False` on the others); all processes check finiteness.
  With `resume_step`, the run continues from that step: metrics.jsonl loses the events logged
  after it, and the new TensorBoard file starts with a purge marker at `resume_step + 1`, so
  TensorBoard hides the old curve past it (every step appears once).
  """

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int | None = None):
    self._enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      purge_step = None
      if resume_step is not None:
        dropped = drop_events_after(workdir, int(resume_step))
        if dropped:
          logging.info("metrics.jsonl: dropped %d event(s) logged after step %d by the "
                       "interrupted run.", dropped, resume_step)
        purge_step = int(resume_step) + 1
      self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a", encoding="utf-8")
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=purge_step)
      except ImportError:  # TensorBoard is optional; metrics.jsonl is always written.
        self._tb = None

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Checks and writes one log event: `scalars` {name: value} at `step`."""
    values = {k: float(v) for k, v in scalars.items()}
    check_finite(step, values)
    if not self._enabled:
      return
    self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for name, value in values.items():
        self._tb.add_scalar(name, value, int(step))

  def write_audio(self, step: int, name: str, audio: np.ndarray, sample_rate: int) -> None:
    """Writes float32 audio (frames, channels in {1, 2}), values in [-1, 1], to TensorBoard."""
    if self._enabled and self._tb is not None:
      self._tb.add_audio(name, np.clip(np.asarray(audio, np.float32), -1, 1), int(step),
                         sample_rate=int(sample_rate))

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """Writes an image (H, W, 3 or 4), uint8 or float in [0, 1], to TensorBoard."""
    if self._enabled and self._tb is not None:
      self._tb.add_image(name, np.asarray(image), int(step), dataformats="HWC")

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


class Progress:
  """Console progress lines: step, bits, tokens/s and ETA (process 0 only)."""

  def __init__(self, total_steps: int, *, enabled: bool = True, stream=None):
    self._total_steps = total_steps
    self._enabled = enabled
    self._stream = stream or sys.stdout
    self._start_time = time.monotonic()
    self._start_step = None

  def update(self, step: int, scalars: Mapping[str, float]) -> None:
    """Prints one line for `step` with the given metrics and the time left at the current pace."""
    if not self._enabled:
      return
    now = time.monotonic()
    if self._start_step is None:
      self._start_step, self._start_time = step, now
    done = step - self._start_step
    eta = ""
    if done > 0:
      seconds_left = (now - self._start_time) / done * max(self._total_steps - step, 0)
      eta = f" ETA {int(seconds_left // 60)}m{int(seconds_left % 60):02d}s"
    parts = [f"step {step}/{self._total_steps}"]
    for name in ("train/bits_per_token", "eval/bits_per_token", "eval/bits_per_token_left",
                 "eval/bits_per_token_right", "train/learning_rate", "train/tokens_per_second"):
      if name in scalars:
        short = name.replace("bits_per_token", "bits").replace("tokens_per_second", "tokens/s")
        short = short.replace("train/learning_rate", "lr")
        fmt = ("{:.0f}" if "per_second" in name else "{:.3g}" if "learning_rate" in name
               else "{:.4f}")
        parts.append(f"{short} {fmt.format(scalars[name])}")
    print(" | ".join(parts) + eta, file=self._stream, flush=True)
