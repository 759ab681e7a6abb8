"""Start-up cost of `dataset.verify_audio`: probing with `tail` vs decoding every file (`full`).

Run (from the repository root):
  python benchmarks/verify_audio.py                     # the bundled demo music
  python benchmarks/verify_audio.py --path=/data/music --threads=1,8

Times `audio.probe_all` over every file of the folder (minimum of --repeats runs; the page cache
is warm after the first). Prints a table and one JSON line.
"""

import json
import os
import time

from absl import app
from absl import flags

from sashimi_jax.data import audio
from sashimi_jax.data import pipeline

_PATH = flags.DEFINE_string("path", pipeline.DEMO_DATA_DIR, "Audio folder.")
_THREADS = flags.DEFINE_list("threads", ["1", "2"], "Thread counts for `full`.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Runs per setting; the minimum is reported.")


def _best_seconds(fn, repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def main(argv):
  del argv
  paths, _ = audio.find_audio_files(_PATH.value)
  reader = audio.FileReader()
  infos = audio.probe_all(reader, paths, description="benchmark", num_threads=1)
  hours = sum(i.frames / i.sample_rate for i in infos) / 3600
  rows = [("tail", 1, _best_seconds(
      lambda: audio.probe_all(reader, paths, description="b", num_threads=1), _REPEATS.value))]
  for threads in (int(t) for t in _THREADS.value):
    rows.append(("full", threads, _best_seconds(
        lambda t=threads: audio.probe_all(reader, paths, description="b", verify="full",
                                          num_threads=t), _REPEATS.value)))
  load = os.getloadavg()
  print(f"{len(paths)} files, {hours:.2f} h of audio in {_PATH.value} (load {load[0]:.1f})")
  print(f"{'verify':<8} {'threads':>7} {'seconds':>9} {'audio s/s':>10}")
  for verify, threads, seconds in rows:
    print(f"{verify:<8} {threads:>7} {seconds:>9.2f} {hours * 3600 / seconds:>10.0f}")
  print(json.dumps({"benchmark": "verify_audio", "files": len(paths), "audio_hours": hours,
                    "load_average": [round(x, 2) for x in load],
                    "rows": [{"verify": v, "threads": t, "seconds": s} for v, t, s in rows]}))


if __name__ == "__main__":
  app.run(main)
