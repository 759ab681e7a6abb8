"""Throughput of the training input pipeline: audio frames/s and tokens/s, 0 and 2 workers.

Run (from the repository root):
  python benchmarks/data_throughput.py                       # demo data if present
  python benchmarks/data_throughput.py --path=/data/music --sample_len=131072 --batch_size=1

Without --path it reads the bundled demo music (sashimi_jax/demo_data) if any is there, else a
folder of generated stereo FLACs. The first batch of each run (worker start-up, file probing) is
timed separately and excluded from the rate. Prints a table and one JSON line.
"""

import json
import os
import tempfile
import time

from absl import app
from absl import flags
import ml_collections
import numpy as np
import soundfile as sf

from sashimi_jax.data import audio
from sashimi_jax.data import pipeline

_PATH = flags.DEFINE_string("path", None, "Audio folder; default: demo data, else generated.")
_SAMPLE_LEN = flags.DEFINE_integer("sample_len", 16384, "Frames per clip.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Global batch size.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 40, "Batches timed per run.")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "Worker counts to compare.")
_STEREO = flags.DEFINE_boolean("stereo", True, "Stereo (temporal interleaving) or mono.")


def _generated_folder(root: str, num_files: int = 8, seconds: float = 20.0,
                      sample_rate: int = 16000) -> str:
  """Writes `num_files` stereo FLACs of noisy chords; returns the folder."""
  rng = np.random.default_rng(0)
  t = np.arange(int(seconds * sample_rate)) / sample_rate
  for i in range(num_files):
    freqs = 110.0 * 2 ** (rng.integers(0, 24, size=3) / 12)
    left = sum(np.sin(2 * np.pi * f * t) for f in freqs) / 3
    right = 0.5 * np.roll(left, 40) + 0.01 * rng.standard_normal(t.size)
    sf.write(os.path.join(root, f"gen{i}.flac"), np.stack([left, right], -1).astype(np.float32),
             sample_rate)
  return root


def _config(path: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      path=path, sample_rate=16000, sample_len=_SAMPLE_LEN.value, is_stereo=_STEREO.value,
      interleaving_strategy="temporal", bits=8, quantization="mu-law", normalize=True,
      resample=True, mono_to_stereo="duplicate", valid_fraction=0.06, test_fraction=0.06,
      num_workers=0))


def _measure(cfg, workers: int) -> dict:
  start = time.perf_counter()
  it = pipeline.create_train_iterator(cfg, global_batch_size=_BATCH_SIZE.value, seed=0,
                                      num_workers=workers)
  first = next(it)
  first_batch_seconds = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(_NUM_BATCHES.value):
    batch = next(it)
  seconds = time.perf_counter() - start
  if hasattr(it, "close"):
    it.close()
  frames = _NUM_BATCHES.value * _BATCH_SIZE.value * cfg.sample_len
  tokens = _NUM_BATCHES.value * batch["y"].size
  assert first["y"].shape == batch["y"].shape
  return dict(workers=workers, first_batch_seconds=round(first_batch_seconds, 2),
              seconds=round(seconds, 3), frames_per_second=round(frames / seconds),
              tokens_per_second=round(tokens / seconds),
              batches_per_second=round(_NUM_BATCHES.value / seconds, 2))


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    path = _PATH.value
    source = "given"
    if path is None:
      demo_files, _ = (audio.find_audio_files(pipeline.DEMO_DATA_DIR)
                       if os.path.isdir(pipeline.DEMO_DATA_DIR) else ([], 0))
      path, source = ((pipeline.DEMO_DATA_DIR, "demo") if demo_files
                      else (_generated_folder(tmp), "generated"))
    cfg = _config(path)
    rows = [_measure(cfg, int(w)) for w in _WORKERS.value]
  print(f"data: {path} ({source}); stereo={cfg.is_stereo}; sample_len={cfg.sample_len}; "
        f"global batch {_BATCH_SIZE.value}; {_NUM_BATCHES.value} batches timed; cpus "
        f"{os.cpu_count()} (shared machine: rates are noisy)")
  print(f"{'workers':>7} {'first batch s':>13} {'frames/s':>12} {'tokens/s':>12} {'batches/s':>9}")
  for r in rows:
    print(f"{r['workers']:>7} {r['first_batch_seconds']:>13.2f} {r['frames_per_second']:>12,} "
          f"{r['tokens_per_second']:>12,} {r['batches_per_second']:>9.2f}")
  print(json.dumps(dict(benchmark="data_throughput", data=source, sample_len=cfg.sample_len,
                        stereo=cfg.is_stereo, batch_size=_BATCH_SIZE.value, results=rows)))


if __name__ == "__main__":
  app.run(main)
