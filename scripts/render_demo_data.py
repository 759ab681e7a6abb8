"""Renders the bundled stereo demo data (sashimi_jax/demo_data/) from public-domain scores.

The recipe: excerpts of scores in music21's corpus (all composers died before 1830) are exported to
MIDI, every part is given its own MIDI channel, General MIDI program and pan (CC 10, spread from
left to right), and FluidSynth renders them with the FluidR3_GM soundfont at 16 kHz. Each render is
trimmed of leading/trailing silence, peak-normalised to -1 dBFS jointly over both channels,
quantised to 16 bits and written as FLAC, with manifest.json and README.md beside the files.

Run (needs music21, the `fluidsynth` CLI and /usr/share/sounds/sf2/FluidR3_GM.sf2):

  python scripts/render_demo_data.py                    # (re)writes sashimi_jax/demo_data/
  python scripts/render_demo_data.py --verify           # renders to a temp dir, compares sha256

Determinism: FluidSynth's fast (offline) renderer with one CPU core, a fixed soundfont, fixed
settings and no real-time audio driver renders the same samples on every run (checked with
--verify); the float render is trimmed, scaled and rounded here in numpy. Another FluidSynth,
libsndfile/libFLAC, soundfont or music21 version may change the bytes (and so the sha256) but not
the music.
"""

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import soundfile as sf

SAMPLE_RATE_HZ = 16000
SOUNDFONT_PATH = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
OUT_DIR = pathlib.Path(__file__).resolve().parent.parent / "sashimi_jax" / "demo_data"
PEAK_DBFS = -1.0
# Frames quieter than this (relative to the file's peak) at either end are trimmed.
SILENCE_DB = -60.0
FLUIDSYNTH_GAIN = 0.5
FLUIDSYNTH_TIMEOUT_SECONDS = 120
PAN_MIN, PAN_MAX = 16, 112  # CC 10 values: 0 hard left, 64 centre, 127 hard right.
VOLUME_CC7 = 100
REVERB_SEND_CC91 = 40
PERCUSSION_CHANNEL = 9  # 0-based channel 10 plays drums in General MIDI: never used for a part.

# General MIDI program numbers (0-based) used below, with their GM names for the README.
GM_NAMES = {
    0: "Acoustic Grand Piano",
    6: "Harpsichord",
    19: "Church Organ",
    40: "Violin",
    41: "Viola",
    42: "Cello",
    52: "Choir Aahs",
    56: "Trumpet",
    57: "Trombone",
    58: "Tuba",
    60: "French Horn",
    68: "Oboe",
    69: "English Horn",
    70: "Bassoon",
    71: "Clarinet",
    73: "Flute",
    74: "Recorder",
}
STRING_QUARTET = (40, 40, 41, 42)


@dataclasses.dataclass(frozen=True)
class Piece:
  """One excerpt to render.

  Attributes:
    name: output file stem.
    corpus_path: path of the score in music21's corpus.
    composer: composer and life dates.
    work: the work and movement.
    measures: first and last measure number of the excerpt (inclusive; 0 is a pickup).
    quarter_bpm: tempo in quarter notes per minute (the score's own marks are replaced).
    programs: General MIDI program (0-based) per part, in score order.
  """

  name: str
  corpus_path: str
  composer: str
  work: str
  measures: tuple[int, int]
  quarter_bpm: float
  programs: tuple[int, ...]


PIECES = (
    Piece("bach_bwv66-6_chorale", "bach/bwv66.6.mxl", "Johann Sebastian Bach (1685-1750)",
          "Chorale BWV 66.6, closing chorale of Cantata BWV 66 'Erfreut euch, ihr Herzen'",
          (0, 5), 88.0, (73, 68, 71, 70)),
    Piece("bach_bwv269_chorale", "bach/bwv269.mxl", "Johann Sebastian Bach (1685-1750)",
          "Chorale BWV 269, 'Aus meines Herzens Grunde'", (0, 8), 100.0, (56, 60, 57, 58)),
    Piece("monteverdi_madrigal-3-1", "monteverdi/madrigal.3.1.mxl",
          "Claudio Monteverdi (1567-1643)",
          "Madrigals, Book 3, no. 1, 'La giovinetta pianta'", (1, 7), 120.0, (74, 73, 71, 69, 70)),
    Piece("haydn_op1no1_mvt1", "haydn/opus1no1/movement1.mxl", "Joseph Haydn (1732-1809)",
          "String Quartet op. 1 no. 1, I. Presto", (0, 15), 176.0, STRING_QUARTET),
    Piece("haydn_op74no1_mvt1", "haydn/opus74no1/movement1.mxl", "Joseph Haydn (1732-1809)",
          "String Quartet op. 74 no. 1, I. Allegro moderato", (1, 8), 120.0, STRING_QUARTET),
    Piece("mozart_k80_mvt1", "mozart/k80/movement1.mxl", "Wolfgang Amadeus Mozart (1756-1791)",
          "String Quartet no. 1, K. 80, I. Adagio", (1, 5), 66.0, STRING_QUARTET),
    Piece("mozart_k155_mvt1", "mozart/k155/movement1.mxl", "Wolfgang Amadeus Mozart (1756-1791)",
          "String Quartet no. 2, K. 155, I. Allegro (first violin part played on flute)",
          (1, 8), 132.0, (73, 40, 41, 42)),
    Piece("mozart_k458_mvt1", "mozart/k458/movement1.mxl", "Wolfgang Amadeus Mozart (1756-1791)",
          "String Quartet no. 17 'The Hunt', K. 458, I. Allegro vivace assai", (0, 14), 168.0,
          STRING_QUARTET),
    Piece("mozart_k545_mvt1", "mozart/k545/movement1_exposition.mxl",
          "Wolfgang Amadeus Mozart (1756-1791)",
          "Piano Sonata no. 16, K. 545, I. Allegro (exposition)", (1, 8), 126.0, (0, 0)),
    Piece("cpebach_h186_mvt2", "cpebach/h186.mxl", "Carl Philipp Emanuel Bach (1714-1788)",
          "Keyboard Sonata in A major, H. 186 (Wq. 55/4), II. Poco adagio", (1, 4), 66.0, (6, 6)),
    Piece("beethoven_op18no1_mvt1", "beethoven/opus18no1/movement1.mxl",
          "Ludwig van Beethoven (1770-1827)", "String Quartet op. 18 no. 1, I. Allegro con brio",
          (1, 18), 200.0, STRING_QUARTET),
)


def spread_pans(num_parts: int) -> list[int]:
  """CC 10 pan values for `num_parts` parts, evenly from left (first part) to right (last)."""
  if num_parts < 1:
    raise ValueError(f"num_parts must be >= 1, got {num_parts}")
  if num_parts == 1:
    return [64]
  return [int(round(p)) for p in np.linspace(PAN_MIN, PAN_MAX, num_parts)]


def part_channels(num_parts: int) -> list[int]:
  """0-based MIDI channels for `num_parts` parts, skipping the GM percussion channel."""
  channels = [c for c in range(16) if c != PERCUSSION_CHANNEL][:num_parts]
  if len(channels) < num_parts:
    raise ValueError(f"{num_parts} parts do not fit in the 15 melodic MIDI channels")
  return channels


def excerpt_score(piece: Piece):
  """The music21 score of `piece`'s excerpt, with one tempo mark of `quarter_bpm` at the start."""
  from music21 import bar, corpus, repeat, spanner, tempo  # pylint: disable=g-import-not-at-top

  score = corpus.parse(piece.corpus_path)
  if len(score.parts) != len(piece.programs):
    raise ValueError(f"{piece.corpus_path} has {len(score.parts)} parts but "
                     f"{len(piece.programs)} programs were given")
  excerpt = score.measures(*piece.measures)
  for mark in list(excerpt.recurse().getElementsByClass(tempo.TempoIndication)):
    mark.activeSite.remove(mark)
  # Play the excerpt straight through: MIDI export would expand (or reject) its repeats.
  for measure in excerpt.recurse().getElementsByClass("Measure"):
    if isinstance(measure.leftBarline, bar.Repeat):
      measure.leftBarline = None
    if isinstance(measure.rightBarline, bar.Repeat):
      measure.rightBarline = bar.Barline("regular")
  for element in list(excerpt.recurse().getElementsByClass(
      (repeat.RepeatExpression, spanner.RepeatBracket))):
    element.activeSite.remove(element)
  first_measure = excerpt.parts[0].getElementsByClass("Measure")[0]
  first_measure.insert(0, tempo.MetronomeMark(number=piece.quarter_bpm))
  return excerpt


def score_to_midi_bytes(score, programs: tuple[int, ...], pans: list[int]) -> bytes:
  """Standard MIDI file bytes of `score`, part i on its own channel with programs[i] and pans[i].

  music21 writes a conductor track and then one track per part, every part on channel 1
  (1-based); this moves each part's channel events to its own channel, sets its program, and
  adds volume, pan and reverb-send controller events at time 0.
  """
  from music21 import midi  # pylint: disable=g-import-not-at-top
  from music21.midi import translate  # pylint: disable=g-import-not-at-top

  voice = midi.ChannelVoiceMessages
  midi_file = translate.streamToMidiFile(score)
  part_tracks = [t for t in midi_file.tracks
                 if any(isinstance(e, midi.MidiEvent) and e.type == voice.NOTE_ON
                        for e in t.events)]
  if len(part_tracks) != len(programs):
    raise ValueError(f"MIDI export has {len(part_tracks)} note tracks for "
                     f"{len(programs)} parts")
  for track, channel, program, pan in zip(part_tracks, part_channels(len(programs)),
                                          programs, pans):
    channel_1based = channel + 1  # music21 numbers channels 1..16.
    for event in track.events:
      if isinstance(event, midi.MidiEvent) and isinstance(event.type, voice):
        event.channel = channel_1based
        if event.type == voice.PROGRAM_CHANGE:
          event.data = program
    setup = []
    for controller, value in ((7, VOLUME_CC7), (10, pan), (91, REVERB_SEND_CC91)):
      event = midi.MidiEvent(track, type=voice.CONTROLLER_CHANGE, channel=channel_1based)
      event.parameter1, event.parameter2 = controller, value
      setup += [midi.DeltaTime(track, time=0), event]
    if not isinstance(track.events[0], midi.DeltaTime) or track.events[-1].type != (
        midi.MetaEvents.END_OF_TRACK):
      raise ValueError("unexpected music21 MIDI track layout: not delta time ... end of track")
    # FluidSynth >= 2.3.1 renders until no voice sounds, and a voice whose note-off got lost
    # (e.g. overlapping notes of one pitch) sounds forever: release every note at the end.
    all_notes_off = midi.MidiEvent(track, type=voice.CONTROLLER_CHANGE, channel=channel_1based)
    all_notes_off.parameter1, all_notes_off.parameter2 = 123, 0
    track.events[-1:-1] = [all_notes_off, midi.DeltaTime(track, time=0)]
    track.events[0:0] = setup
  return midi_file.writestr()


def render_midi(midi_path: pathlib.Path, wav_path: pathlib.Path) -> None:
  """Renders `midi_path` to a 32-bit float stereo WAV at SAMPLE_RATE_HZ with FluidSynth."""
  command = [
      "fluidsynth", "-n", "-i", "-q",
      "-F", str(wav_path), "-T", "wav", "-O", "float",
      "-r", str(SAMPLE_RATE_HZ), "-g", str(FLUIDSYNTH_GAIN),
      "-R", "1", "-C", "0",
      "-o", "synth.cpu-cores=1",
      SOUNDFONT_PATH, str(midi_path),
  ]
  # The timeout guards against a render that never ends (and fills the disk).
  subprocess.run(command, check=True, capture_output=True, timeout=FLUIDSYNTH_TIMEOUT_SECONDS)


def trim_and_normalize(audio: np.ndarray) -> np.ndarray:
  """Trims quiet ends and scales to PEAK_DBFS; (frames, 2) float -> (frames', 2) int16."""
  if audio.ndim != 2 or audio.shape[1] != 2:
    raise ValueError(f"expected stereo audio (frames, 2), got shape {audio.shape}")
  level = np.abs(audio).max(axis=1)
  peak = level.max()
  if not np.isfinite(peak) or peak <= 0:
    raise ValueError("render is silent or non-finite")
  loud = np.nonzero(level > peak * 10 ** (SILENCE_DB / 20))[0]
  audio = audio[loud[0]:loud[-1] + 1]
  scaled = audio * (10 ** (PEAK_DBFS / 20) / peak)
  return np.round(scaled * 32767).astype(np.int16)


def sha256_of(path: pathlib.Path) -> str:
  """Hex sha256 of the file at `path`."""
  return hashlib.sha256(path.read_bytes()).hexdigest()


def render_piece(piece: Piece, out_dir: pathlib.Path, work_dir: pathlib.Path) -> dict:
  """Renders one piece to out_dir/<name>.flac; returns its manifest entry."""
  pans = spread_pans(len(piece.programs))
  midi_path = work_dir / f"{piece.name}.mid"
  wav_path = work_dir / f"{piece.name}.wav"
  midi_path.write_bytes(score_to_midi_bytes(excerpt_score(piece), piece.programs, pans))
  render_midi(midi_path, wav_path)
  audio, rate_hz = sf.read(wav_path, dtype="float64", always_2d=True)
  if rate_hz != SAMPLE_RATE_HZ:
    raise ValueError(f"FluidSynth wrote {rate_hz} Hz, expected {SAMPLE_RATE_HZ}")
  pcm = trim_and_normalize(audio)
  flac_path = out_dir / f"{piece.name}.flac"
  sf.write(flac_path, pcm, SAMPLE_RATE_HZ, format="FLAC", subtype="PCM_16",
           compression_level=1.0)
  return {
      "name": flac_path.name,
      "frames": int(pcm.shape[0]),
      "seconds": round(pcm.shape[0] / SAMPLE_RATE_HZ, 4),
      "sample_rate": SAMPLE_RATE_HZ,
      "channels": 2,
      "sha256": sha256_of(flac_path),
      "composer": piece.composer,
      "work": piece.work,
      "corpus_path": piece.corpus_path,
      "measures": list(piece.measures),
      "quarter_bpm": piece.quarter_bpm,
      "instruments": [{"program": p, "name": GM_NAMES[p], "pan_cc10": pan}
                      for p, pan in zip(piece.programs, pans)],
  }


def readme_text(entries: list[dict]) -> str:
  """The README.md of the demo data: provenance per file, licences, how to regenerate."""
  total_seconds = sum(e["seconds"] for e in entries)
  rows = []
  for e in entries:
    parts = ", ".join(f"{i['name']} (pan {i['pan_cc10']})" for i in e["instruments"])
    first, last = e["measures"]
    rows.append(f"| `{e['name']}` | {e['work']} | {e['composer']} | `{e['corpus_path']}` "
                f"mm. {first}-{last}, quarter = {e['quarter_bpm']:g} | {parts} | "
                f"{e['seconds']:.2f} |")
  return f"""# Bundled stereo demo data

{len(entries)} stereo FLAC files, 16 kHz, 16-bit, {total_seconds:.1f} s in total: excerpts of
public-domain scores from the [music21](https://www.music21.org) corpus, rendered with the
FluidR3_GM General MIDI soundfont through FluidSynth. Every part has its own General MIDI
instrument and its own pan position (MIDI CC 10, spread evenly from the first part on the left to
the last part on the right; 0 is hard left, 64 centre, 127 hard right), so the left and right
channels genuinely differ. FluidSynth's reverb is on (send CC 91 = {REVERB_SEND_CC91}), chorus off.
Each file is trimmed of leading and trailing frames below {SILENCE_DB:g} dB of its peak and
peak-normalised to {PEAK_DBFS:g} dBFS jointly over both channels. `manifest.json` lists every file
with frames, seconds, sample rate, channels and sha256 (and the provenance below).

These files are a demo and a test fixture (used when `dataset.path == ""`): synthesised,
score-exact and quantised to 16 bits, they are easier than recorded music.

| file | work | composer | source (corpus path, excerpt, tempo) | instruments and pans, first part to last | seconds |
|---|---|---|---|---|---|
""" + "\n".join(rows) + f"""

## Licences

- **Scores.** All composers died before 1830; the compositions are in the public domain. The
  encodings come from music21's corpus, whose `corpus/license.txt` states that they are
  distributed with the permission of the encoders and that some may carry restrictions embedded
  in individual files or directories. None of the files used here carries a rights, copyright or
  licence statement (checked in their MusicXML `identification` and in music21's metadata); the
  corpus excerpts with an embedded licence (e.g. `corelli/opus3no1`, CC-BY) and the Humdrum
  (`.krn`) encodings were avoided.
- **Soundfont.** FluidR3_GM by Frank Wen, MIT licence (Debian package `fluid-soundfont-gm`,
  `/usr/share/doc/fluid-soundfont-gm/copyright`): "Copyright © 2000-2002, 2008 Frank Wen" and
  "Copyright © 2008 Toby Smithe"; "I hereby release Fluid under the MIT license, as described in
  COPYING." The rendered audio contains the soundfont's samples; the MIT permission notice:
  "Permission is hereby granted, free of charge, to any person obtaining a copy of this software
  and associated documentation files (the "Software"), to deal in the Software without
  restriction, including without limitation the rights to use, copy, modify, merge, publish,
  distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
  Software is furnished to do so, subject to the following conditions: The above copyright notice
  and this permission notice shall be included in all copies or substantial portions of the
  Software. THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED,
  INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE
  AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
  DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT
  OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE."
- **FluidSynth** (LGPL-2.1) and **music21** (BSD-3-Clause) were used as tools; neither is
  distributed here.

## Regenerating

```
apt-get install fluidsynth fluid-soundfont-gm
pip install -e '.[demo-render]'          # music21
python scripts/render_demo_data.py       # rewrites this directory
python scripts/render_demo_data.py --verify   # re-renders to a temp dir and compares sha256
```

The script is the recipe (pieces, measures, tempi, instruments, pans, render settings). With the
same FluidSynth (rendered here with FluidSynth {fluidsynth_version()}), soundfont, music21 and
libsndfile the output is bit-identical (FluidSynth's offline renderer on one core is
deterministic); other versions may change the bytes and so the sha256, not the music.
"""


def fluidsynth_version() -> str:
  """The installed FluidSynth version string, e.g. '2.3.1'."""
  out = subprocess.run(["fluidsynth", "--version"], check=True, capture_output=True,
                       text=True).stdout
  for line in out.splitlines():
    if line.startswith("FluidSynth runtime version"):
      return line.split()[-1]
  return "unknown"


def render_all(out_dir: pathlib.Path) -> list[dict]:
  """Renders every piece into out_dir and returns the manifest entries."""
  out_dir.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as work_dir:
    entries = []
    for piece in PIECES:
      entry = render_piece(piece, out_dir, pathlib.Path(work_dir))
      print(f"{entry['name']}: {entry['seconds']:.2f} s", flush=True)
      entries.append(entry)
  return entries


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out_dir", type=pathlib.Path, default=OUT_DIR)
  parser.add_argument("--verify", action="store_true",
                      help="render to a temporary dir and compare sha256 with the manifest")
  args = parser.parse_args(argv)
  if shutil.which("fluidsynth") is None:
    raise FileNotFoundError("`fluidsynth` is not on PATH (apt-get install fluidsynth)")
  if not os.path.exists(SOUNDFONT_PATH):
    raise FileNotFoundError(f"{SOUNDFONT_PATH} not found (apt-get install fluid-soundfont-gm)")

  if args.verify:
    manifest = json.loads((args.out_dir / "manifest.json").read_text())
    expected = {f["name"]: f["sha256"] for f in manifest["files"]}
    with tempfile.TemporaryDirectory() as tmp:
      entries = render_all(pathlib.Path(tmp))
    actual = {e["name"]: e["sha256"] for e in entries}
    mismatched = sorted(n for n in expected.keys() | actual.keys()
                        if expected.get(n) != actual.get(n))
    print("identical" if not mismatched else f"differ: {mismatched}")
    return 0 if not mismatched else 1

  for old in args.out_dir.glob("*.flac"):
    old.unlink()
  entries = render_all(args.out_dir)
  manifest = {
      "sample_rate": SAMPLE_RATE_HZ,
      "channels": 2,
      "total_seconds": round(sum(e["seconds"] for e in entries), 4),
      "files": entries,
  }
  (args.out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
  (args.out_dir / "README.md").write_text(readme_text(entries))
  total_bytes = sum((args.out_dir / e["name"]).stat().st_size for e in entries)
  print(f"total {manifest['total_seconds']:.1f} s, {total_bytes / 1e6:.2f} MB")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
