"""Fuzzes the audio loader: mutated FLAC/WAV/OGG/MP3 files through probe, read and encode.

Run (from the repository root):
  python benchmarks/fuzz_audio.py                       # 1,000 mutated files, seed 0
  python benchmarks/fuzz_audio.py --num_files=200 --seed=3

Seed files (short stereo and mono tones, float WAVs with NaN/inf samples, odd sample rates and
channel counts) are written, then mutated: truncation, byte flips in the header or the body, byte
runs zeroed, inserted or deleted, wrong extensions. Each file goes through what training does:
`FileReader.probe` (with `verify_audio=tail` and `full`), `check_compatible` against a stereo
16 kHz config, every clip read without substitution, and `pipeline.encode_clip`. Files are handled
by worker subprocesses that report after every file, so a crash (a signal, an abort in a decoder)
is counted for the file in progress and a new worker continues with the next one.

Outcomes per file:
  skipped at probe      BadAudioError from the tail probe (the named skip)
  rejected by config    ValueError naming the file (rate/channels the config cannot use)
  skipped at read       passed the probe, but a clip read raised BadAudioError (training would
                        substitute it); `full` verification must have skipped every such file
  accepted              every clip read and encoded to finite int32 tokens in [0, 2**bits)
  bad tokens            tokens out of range (must be 0)
  uncaught exception    any other exception type (must be 0)
  crash                 the worker process died (must be 0)
Prints a table and one JSON line.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = ("wav", "flac", "ogg", "mp3")
MUTATIONS = ("none", "truncate", "flip_header", "flip_body", "zero_run", "insert", "delete",
             "wrong_extension")
OUTCOMES = ("skipped at probe", "rejected by config", "skipped at read", "accepted",
            "bad tokens", "uncaught exception", "crash")
SAMPLE_RATE = 16000
SAMPLE_LEN = 4096


def _seed_signal(rng, frames: int, channels: int) -> np.ndarray:
  t = np.arange(frames) / SAMPLE_RATE
  cols = [0.4 * np.sin(2 * np.pi * rng.uniform(80, 2000) * t) + 0.05 * rng.standard_normal(frames)
          for _ in range(channels)]
  return np.stack(cols, axis=-1).astype(np.float32)


def write_seed_files(folder: str, seed: int = 0) -> list[str]:
  """Writes the unmutated seed files; returns their paths."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  paths = []
  specs = []
  for ext in FORMATS:
    for channels in (2, 1):
      specs.append((ext, channels, SAMPLE_RATE, None))
  specs += [("wav", 2, 11025, None), ("wav", 3, SAMPLE_RATE, None), ("flac", 6, 8000, None),
            ("wav", 2, 7, None), ("wav", 2, SAMPLE_RATE, "nan"), ("wav", 2, SAMPLE_RATE, "inf")]
  for i, (ext, channels, rate, special) in enumerate(specs):
    frames = int(rng.integers(SAMPLE_LEN // 2, 3 * SAMPLE_LEN)) if rate > 100 else 40
    data = _seed_signal(rng, frames, channels)
    subtype = None
    if special:
      data[rng.integers(0, frames, 3), 0] = np.nan if special == "nan" else np.inf
      subtype = "FLOAT"
    suffix = f"_{special}" if special else ""
    path = os.path.join(folder, f"seed{i:02d}_{channels}ch_{rate}hz{suffix}.{ext}")
    sf.write(path, data, rate, subtype=subtype)
    paths.append(path)
  return paths


def mutate(data: bytes, mutation: str, rng) -> bytes:
  """One mutation of a file's bytes."""
  data = bytearray(data)
  n = len(data)
  if mutation == "truncate":
    return bytes(data[: int(rng.integers(0, n))])
  if mutation in ("flip_header", "flip_body"):
    lo, hi = (0, min(n, 128)) if mutation == "flip_header" else (min(n - 1, 128), n)
    for pos in rng.integers(lo, max(hi, lo + 1), int(rng.integers(1, 9))):
      data[pos] ^= int(rng.integers(1, 256))
    return bytes(data)
  if mutation == "zero_run":
    start = int(rng.integers(0, n))
    length = min(n - start, int(rng.integers(1, 4096)))
    data[start:start + length] = bytes(length)
    return bytes(data)
  if mutation == "insert":
    pos = int(rng.integers(0, n))
    return bytes(data[:pos]) + rng.bytes(int(rng.integers(1, 64))) + bytes(data[pos:])
  if mutation == "delete":
    pos = int(rng.integers(0, n))
    return bytes(data[:pos]) + bytes(data[pos + int(rng.integers(1, 64)):])
  return bytes(data)


def make_mutants(folder: str, num_files: int, seed: int = 0) -> list[str]:
  """Writes `num_files` mutated files (the seeds cycled, mutations drawn); returns their paths."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(folder, "seeds"), exist_ok=True)
  seeds = write_seed_files(os.path.join(folder, "seeds"), seed)
  paths = []
  for i in range(num_files):
    source = seeds[i % len(seeds)]
    mutation = MUTATIONS[int(rng.integers(0, len(MUTATIONS)))]
    with open(source, "rb") as f:
      data = mutate(f.read(), mutation, rng)
    stem, ext = os.path.splitext(os.path.basename(source))
    if mutation == "wrong_extension":
      ext = "." + FORMATS[(FORMATS.index(ext[1:]) + 1 + int(rng.integers(0, 3))) % len(FORMATS)]
    path = os.path.join(folder, f"m{i:05d}_{mutation}_{stem}{ext}")
    with open(path, "wb") as f:
      f.write(data)
    paths.append(path)
  return paths


def check_file(path: str) -> dict:
  """Probe, config check, read every clip, encode: the outcome of one file (in this process)."""
  from sashimi_jax.data import audio  # pylint: disable=g-import-not-at-top
  from sashimi_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  settings = pipeline.DataSettings.from_config(dict(
      path="", sample_rate=SAMPLE_RATE, sample_len=SAMPLE_LEN, is_stereo=True,
      interleaving_strategy="temporal", bits=8, quantization="mu-law", normalize=True,
      resample=True, mono_to_stereo="duplicate", valid_fraction=0.0, test_fraction=0.0,
      num_workers=0))
  reader = audio.FileReader()
  result = {"path": path}
  try:
    try:
      info = reader.probe(path)
    except audio.BadAudioError as e:
      return dict(result, outcome="skipped at probe", cause=str(e)[:200])
    try:
      audio.check_compatible(info, sample_rate=SAMPLE_RATE, is_stereo=True, resample=True,
                             mono_to_stereo="duplicate")
    except ValueError as e:
      return dict(result, outcome="rejected by config", cause=str(e)[:200])
    try:
      audio.decode_fully(reader, info)
      result["full_verify"] = "passed"
    except audio.BadAudioError:
      result["full_verify"] = "skipped"
    source = audio.AudioClipSource(reader, [info], sample_len=SAMPLE_LEN,
                                   sample_rate=SAMPLE_RATE, is_stereo=True)
    failed_reads = 0
    for index in range(len(source)):
      try:
        clip = source.read_clip(index)
      except audio.BadAudioError:
        failed_reads += 1
        continue
      tokens = pipeline.encode_clip(clip, settings)
      if (tokens.dtype != np.int32 or tokens.shape != (2 * SAMPLE_LEN,)
          or tokens.min() < 0 or tokens.max() >= 256):
        return dict(result, outcome="bad tokens")
    result["failed_reads"] = failed_reads
    result["clips"] = len(source)
    return dict(result, outcome="skipped at read" if failed_reads else "accepted")
  except Exception as e:  # pylint: disable=broad-except  (counted: must not happen)
    return dict(result, outcome="uncaught exception",
                cause=f"{type(e).__name__}: {e}"[:300] + " | " +
                traceback.format_exc().splitlines()[-3][:200])


def _worker() -> None:
  """Reads paths from stdin; prints one JSON result line per file (flushed)."""
  import logging  # pylint: disable=g-import-not-at-top
  logging.disable(logging.WARNING)  # the loader's skip warnings; outcomes are reported below.
  for line in sys.stdin:
    path = line.strip()
    if path:
      print("START " + path, flush=True)
      print("RESULT " + json.dumps(check_file(path)), flush=True)


def run_files(paths: list[str], timeout_seconds: float = 600) -> list[dict]:
  """Checks `paths` in worker subprocesses, restarting a worker after a crash."""
  results = []
  remaining = list(paths)
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  while remaining:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker"],
                          input="\n".join(remaining) + "\n", capture_output=True, text=True,
                          env=env, timeout=timeout_seconds, cwd=ROOT)
    done = set()
    current = None
    for line in proc.stdout.splitlines():
      if line.startswith("START "):
        current = line[6:]
      elif line.startswith("RESULT "):
        results.append(json.loads(line[7:]))
        done.add(results[-1]["path"])
        current = None
    if current is not None:  # the worker died on this file.
      results.append({"path": current, "outcome": "crash",
                      "cause": f"exit code {proc.returncode}: {proc.stderr.strip()[-300:]}"})
      done.add(current)
    elif proc.returncode != 0 and len(done) < len(remaining):
      raise RuntimeError(f"fuzz worker failed before any file: {proc.stderr[-2000:]}")
    remaining = [p for p in remaining if p not in done]
  return results


def summarize(results: list[dict]) -> dict:
  counts = collections.Counter(r["outcome"] for r in results)
  read_failures_after_full = sum(1 for r in results if r.get("full_verify") == "passed"
                                 and r.get("failed_reads", 0) > 0)
  return {
      "files": len(results),
      **{name: counts.get(name, 0) for name in OUTCOMES},
      "skipped by verify_audio=full": sum(1 for r in results if r.get("full_verify") == "skipped"),
      "substitutions with verify_audio=full": read_failures_after_full,
  }


def main(argv) -> None:
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  num_files, seed = flags.FLAGS.num_files, flags.FLAGS.seed
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as folder:
    paths = make_mutants(folder, num_files, seed)
    results = run_files(paths)
  summary = summarize(results)
  summary["seconds"] = round(time.perf_counter() - start, 1)
  summary["seed"] = seed
  width = max(len(k) for k in summary)
  for key, value in summary.items():
    print(f"{key:<{width}}  {value}")
  for r in results:
    if r["outcome"] in ("bad tokens", "uncaught exception", "crash"):
      print(f"!! {r['outcome']}: {os.path.basename(r['path'])}: {r.get('cause', '')}")
  print(json.dumps({"benchmark": "fuzz_audio", **summary}))


if __name__ == "__main__":
  if sys.argv[1:] == ["--worker"]:
    _worker()
  else:
    from absl import app  # pylint: disable=g-import-not-at-top
    from absl import flags  # pylint: disable=g-import-not-at-top
    flags.DEFINE_integer("num_files", 1000, "Mutated files to check.")
    flags.DEFINE_integer("seed", 0, "Seed of the seed files and the mutations.")
    app.run(main)
