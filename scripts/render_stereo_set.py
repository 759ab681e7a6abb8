"""Renders a second stereo set (not bundled): other public-domain scores, closer pans.

`benchmarks/stereo_strategies.py --datasets=correlated` renders it on demand into its work dir;
it is the "correlated music of a second stereo set" that the stereo targets are measured on.
The recipe is the demo's (`scripts/render_demo_data.py`: music21 corpus excerpts, one General
MIDI program, channel and pan per part, FluidSynth with FluidR3_GM at 16 kHz, trimmed,
peak-normalised to -1 dBFS, 16-bit FLAC) with other pieces (all composers died before 1830;
none of these corpus files carries a rights statement) and pans spread over CC 10 = 40..88
instead of 16..112, so the channels share more of every instrument than the demo's do (higher
inter-channel correlation) yet still differ. Each file is named with its index so the file split
(sorted order: train, then validation, then test) is the order of PIECES: the validation file is
Mozart K. 80/II on winds (correlation 0.62; a linear predictor gains 0.43 bits on R[t] from
L[t], `same_time_bits`), the test file a Bach chorale.

Run (needs music21, the `fluidsynth` CLI and /usr/share/sounds/sf2/FluidR3_GM.sf2):

  apt-get install fluidsynth fluid-soundfont-gm && pip install -e '.[demo-render]'
  python scripts/render_stereo_set.py --out_dir=/tmp/stereo_correlated

Prints per file: seconds, inter-channel correlation and the linear-predictor headroom
(`stereo_metrics.linear_headroom_bits`); writes manifest.json beside the files.
"""

import argparse
import json
import pathlib
import shutil
import sys
import tempfile

import numpy as np
import soundfile as sf

_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "scripts"))

import render_demo_data as demo  # pylint: disable=g-import-not-at-top,wrong-import-position
from sashimi_jax import stereo_metrics  # pylint: disable=g-import-not-at-top,wrong-import-position

PAN_MIN, PAN_MAX = 40, 88  # CC 10: closer to the centre than the demo's 16..112.
STRINGS = (40, 40, 41, 42)
WINDS = (73, 68, 71, 70)  # flute, oboe, clarinet, bassoon
BRASS = (56, 60, 57, 58)  # trumpet, horn, trombone, tuba

Piece = demo.Piece
PIECES = (
    Piece("bach_bwv10-7_chorale", "bach/bwv10.7.mxl", "Johann Sebastian Bach (1685-1750)",
          "Chorale BWV 10.7", (0, 6), 90.0, (19, 52, 52, 42)),
    Piece("bach_bwv140-7_chorale", "bach/bwv140.7.mxl", "Johann Sebastian Bach (1685-1750)",
          "Chorale BWV 140.7, 'Gloria sei dir gesungen'", (0, 6), 88.0, WINDS),
    Piece("bach_bwv153-1_chorale", "bach/bwv153.1.mxl", "Johann Sebastian Bach (1685-1750)",
          "Chorale BWV 153.1", (0, 8), 90.0, BRASS),
    Piece("haydn_op1no1_mvt2", "haydn/opus1no1/movement2.mxl", "Joseph Haydn (1732-1809)",
          "String Quartet op. 1 no. 1, II. Menuetto", (1, 16), 150.0, STRINGS),
    Piece("haydn_op1no1_mvt3", "haydn/opus1no1/movement3.mxl", "Joseph Haydn (1732-1809)",
          "String Quartet op. 1 no. 1, III. Adagio (on winds)", (1, 8), 100.0, WINDS),
    Piece("haydn_op74no1_mvt2", "haydn/opus74no1/movement2.mxl", "Joseph Haydn (1732-1809)",
          "String Quartet op. 74 no. 1, II. Andantino grazioso", (1, 16), 72.0, STRINGS),
    Piece("mozart_k156_mvt1", "mozart/k156/movement1.mxl", "Wolfgang Amadeus Mozart (1756-1791)",
          "String Quartet no. 3, K. 156, I. Presto", (1, 40), 180.0, STRINGS),
    Piece("mozart_k458_mvt2", "mozart/k458/movement2.mxl", "Wolfgang Amadeus Mozart (1756-1791)",
          "String Quartet no. 17, K. 458, II. Menuetto", (1, 20), 160.0, STRINGS),
    Piece("beethoven_op18no1_mvt2", "beethoven/opus18no1/movement2.mxl",
          "Ludwig van Beethoven (1770-1827)", "String Quartet op. 18 no. 1, II. Adagio affettuoso",
          (1, 6), 80.0, STRINGS),
    Piece("mozart_k80_mvt2", "mozart/k80/movement2.mxl", "Wolfgang Amadeus Mozart (1756-1791)",
          "String Quartet no. 1, K. 80, II. Allegro (on winds)", (1, 10), 132.0, WINDS),
    Piece("bach_bwv1-6_chorale", "bach/bwv1.6.mxl", "Johann Sebastian Bach (1685-1750)",
          "Chorale BWV 1.6, 'Wie bin ich doch so herzlich froh'", (0, 6), 84.0,
          (60, 19, 52, 52, 42)),
)


def spread_pans(num_parts: int) -> list[int]:
  """CC 10 pans for `num_parts` parts, evenly from PAN_MIN (first part) to PAN_MAX (last)."""
  if num_parts < 2:
    return [64] * num_parts
  return [int(round(p)) for p in np.linspace(PAN_MIN, PAN_MAX, num_parts)]


def check_tools() -> None:
  """Raises a one-line error naming what to install if a rendering tool is missing."""
  if shutil.which("fluidsynth") is None:
    raise FileNotFoundError("`fluidsynth` is not on PATH: apt-get install fluidsynth "
                            "fluid-soundfont-gm")
  if not pathlib.Path(demo.SOUNDFONT_PATH).exists():
    raise FileNotFoundError(f"{demo.SOUNDFONT_PATH} not found: apt-get install "
                            "fluid-soundfont-gm")
  try:
    import music21  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError("music21 is missing: pip install -e '.[demo-render]'") from e


def render_set(out_dir: pathlib.Path) -> list[dict]:
  """Renders every piece to out_dir/<index>_<name>.flac (kept if present); manifest entries."""
  out_dir.mkdir(parents=True, exist_ok=True)
  entries = []
  with tempfile.TemporaryDirectory() as tmp:
    work = pathlib.Path(tmp)
    for index, piece in enumerate(PIECES):
      name = f"{index:02d}_{piece.name}"
      flac_path = out_dir / f"{name}.flac"
      pans = spread_pans(len(piece.programs))
      if not flac_path.exists():
        check_tools()
        midi_path, wav_path = work / f"{name}.mid", work / f"{name}.wav"
        midi_path.write_bytes(demo.score_to_midi_bytes(demo.excerpt_score(piece), piece.programs,
                                                       pans))
        demo.render_midi(midi_path, wav_path)
        audio, rate_hz = sf.read(wav_path, dtype="float64", always_2d=True)
        if rate_hz != demo.SAMPLE_RATE_HZ:
          raise ValueError(f"FluidSynth wrote {rate_hz} Hz, expected {demo.SAMPLE_RATE_HZ}")
        # Written to a temporary name first: an interrupted render leaves no partial file.
        partial = out_dir / f"{name}.partial.flac"
        sf.write(partial, demo.trim_and_normalize(audio), demo.SAMPLE_RATE_HZ, format="FLAC",
                 subtype="PCM_16")
        partial.rename(flac_path)
      pcm, _ = sf.read(flac_path, dtype="float64")
      entry = {"name": flac_path.name, "seconds": round(pcm.shape[0] / demo.SAMPLE_RATE_HZ, 2),
               "corpus_path": piece.corpus_path, "measures": list(piece.measures),
               "quarter_bpm": piece.quarter_bpm, "programs": list(piece.programs),
               "pans_cc10": pans, "correlation": round(stereo_metrics.correlation(pcm), 3),
               **{k: round(v, 3) for k, v in stereo_metrics.linear_headroom_bits(pcm).items()}}
      print(json.dumps(entry), flush=True)
      entries.append(entry)
  (out_dir / "manifest.json").write_text(json.dumps({"files": entries}, indent=2) + "\n")
  return entries


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out_dir", type=pathlib.Path, required=True)
  args = parser.parse_args(argv)
  entries = render_set(args.out_dir)
  print(f"{len(entries)} files, {sum(e['seconds'] for e in entries):.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
