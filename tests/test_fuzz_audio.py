"""A bounded, seeded fuzz of the audio loader (benchmarks/fuzz_audio.py runs >= 1,000 files).

Mutated FLAC/WAV/OGG/MP3 bytes go through probe, config check, every clip read and encode in a
worker subprocess: the only exceptions allowed are the named skips (BadAudioError at probe or
read, a ValueError naming a file the config cannot use); no crash, no token out of range.
"""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fuzz_module():
  spec = importlib.util.spec_from_file_location("fuzz_audio", ROOT / "benchmarks" / "fuzz_audio.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_mutated_audio_never_escapes_the_named_skips(tmp_path):
  fuzz = _fuzz_module()
  paths = fuzz.make_mutants(str(tmp_path), 48, seed=1)
  results = fuzz.run_files(paths)
  assert sorted(r["path"] for r in results) == sorted(paths)
  summary = fuzz.summarize(results)
  bad = [r for r in results if r["outcome"] in ("bad tokens", "uncaught exception", "crash")]
  assert not bad, bad
  # The fuzz reached every stage: some files skipped at probe, some accepted with tokens.
  assert summary["skipped at probe"] > 0 and summary["accepted"] > 0, summary
  # Whatever full verification lets through reads without a substitution.
  assert summary["substitutions with verify_audio=full"] == 0, summary
