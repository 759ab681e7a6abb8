"""Tests for sashimi_jax/data/audio.py: finding, probing (every bad-input case), reading, clips."""

import logging
import os

import chex
import numpy as np
import pytest
import soundfile as sf

from sashimi_jax.data import audio
import audio_fixtures as af


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_find_audio_files_recursive_natural_order(tmp_path):
  for rel in ["b/a10.wav", "b/a2.flac", "a1.ogg", "c/d/x.MP3"]:
    af.write_audio(tmp_path / rel, 400)
  (tmp_path / "README.md").write_text("notes")
  (tmp_path / "b" / ".hidden.wav").write_text("x")
  paths, ignored = audio.find_audio_files(str(tmp_path))
  rel = [os.path.relpath(p, tmp_path) for p in paths]
  assert rel == ["a1.ogg", "b/a2.flac", "b/a10.wav", "c/d/x.MP3"]
  assert ignored == 1


def test_find_audio_files_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    audio.find_audio_files(str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="not found: .*gone.wav"):
    audio.find_audio_files([str(tmp_path / "gone.wav")])


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
def test_probe_good_formats(tmp_path, ext):
  path = str(tmp_path / f"good.{ext}")
  af.write_audio(path, 4000, channels=2, sample_rate=8000)
  info = audio.FileReader().probe(path)
  assert (info.sample_rate, info.channels) == (8000, 2)
  assert info.frames >= 4000 - 1200  # mp3/ogg may pad or trim a little
  assert info.name == path


def _bad_file(tmp_path, case):
  path = tmp_path / case
  if case == "empty.wav":
    path.write_bytes(b"")
  elif case == "text.wav":
    path.write_text("this is not audio\n" * 20)
  elif case == "noframes.wav":
    sf.write(str(path), np.zeros((0, 2), np.float32), 8000)
  elif case.startswith("trunc"):
    af.write_audio(path, 8000, channels=2)
    af.truncate(path, 0.6)
  elif case == "dangling.wav":
    os.symlink(str(tmp_path / "missing-target.wav"), str(path))
  return str(path)


_BAD_CASES = {
    "empty.wav": "empty file (0 bytes)",
    "text.wav": "not a recognised audio format",
    "noframes.wav": "no audio frames",
    "trunc.wav": "truncated: header declares more audio data than the file holds",
    "trunc.flac": "truncated: could not decode frames",
    "trunc.mp3": "truncated: could only decode",
    "trunc.ogg": "truncated: the last Ogg page lacks an end-of-stream bit",
    "dangling.wav": "unreadable (No such file or directory)",
}


@pytest.mark.parametrize("case", sorted(_BAD_CASES))
def test_probe_bad_files(tmp_path, case):
  path = _bad_file(tmp_path, case)
  with pytest.raises(audio.BadAudioError) as e:
    audio.FileReader().probe(path)
  assert str(e.value).startswith(_BAD_CASES[case]), str(e.value)


def test_probe_all_warns_each_and_summarizes_once(tmp_path, caplog):
  good = af.make_folder(tmp_path, 2)
  bad = [_bad_file(tmp_path, c) for c in ("empty.wav", "text.wav", "trunc.flac", "trunc.wav")]
  caplog.set_level(logging.INFO)
  infos = audio.probe_all(audio.FileReader(), good + bad, description="test folder")
  assert [i.key for i in infos] == good
  messages = _warnings(caplog)
  for path in bad:
    assert sum(path in m and m.startswith("Skipping audio") for m in messages) == 1, messages
  summaries = [m for m in messages if m.startswith("Audio source")]
  assert summaries == ["Audio source test folder: 2 usable, skipped 4 bad (1 empty file, "
                       "1 not a recognised audio format, 2 truncated)."]


def test_load_audio_channels(tmp_path):
  stereo_path, mono_path, multi_path = (str(tmp_path / n) for n in ("s.wav", "m.wav", "x.wav"))
  data = af.write_audio(stereo_path, 1000, channels=2, subtype="FLOAT")
  mono = af.write_audio(mono_path, 1000, channels=1, subtype="FLOAT")
  af.write_audio(multi_path, 1000, channels=3, subtype="FLOAT")
  kw = dict(sample_rate=8000)
  np.testing.assert_array_equal(audio.load_audio(stereo_path, is_stereo=True, **kw), data)
  as_mono = audio.load_audio(stereo_path, is_stereo=False, **kw)
  chex.assert_shape(as_mono, (1000, 1))
  np.testing.assert_allclose(as_mono[:, 0], data.mean(axis=1), atol=1e-7)
  dup = audio.load_audio(mono_path, is_stereo=True, mono_to_stereo="duplicate", **kw)
  np.testing.assert_array_equal(dup, np.repeat(mono, 2, axis=1))
  with pytest.raises(ValueError, match="m.wav is mono but the config is stereo.*'duplicate'"):
    audio.load_audio(mono_path, is_stereo=True, **kw)
  with pytest.raises(ValueError, match="x.wav has 3 channels; a stereo config takes 1 or 2"):
    audio.load_audio(multi_path, is_stereo=True, **kw)
  chex.assert_shape(audio.load_audio(multi_path, is_stereo=False, **kw), (1000, 1))
  with pytest.raises(ValueError, match="mono_to_stereo='copy' is unknown"):
    audio.load_audio(mono_path, is_stereo=True, mono_to_stereo="copy", **kw)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    audio.load_audio(str(tmp_path / "none.wav"), is_stereo=True, **kw)
  bad = _bad_file(tmp_path, "trunc.flac")
  with pytest.raises(audio.BadAudioError, match="trunc.flac: truncated"):
    audio.load_audio(bad, is_stereo=True, **kw)


def test_load_audio_resample_or_reject(tmp_path):
  path = str(tmp_path / "sine16k.wav")
  t = np.arange(16000) / 16000
  sf.write(path, np.sin(2 * np.pi * 440 * t).astype(np.float32), 16000, subtype="FLOAT")
  with pytest.raises(ValueError, match="sine16k.wav is at 16000 Hz but dataset.sample_rate=8000 "
                                       "and dataset.resample=False"):
    audio.load_audio(path, sample_rate=8000, is_stereo=False, resample=False)
  out = audio.load_audio(path, sample_rate=8000, is_stereo=False, resample=True)
  chex.assert_shape(out, (8000, 1))
  expected = np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)
  np.testing.assert_allclose(out[100:-100, 0], expected[100:-100], atol=2e-3)


def test_clip_source_counts_tail_and_short_items(tmp_path):
  paths = [str(tmp_path / f"f{i}.wav") for i in range(3)]
  for i, (path, frames) in enumerate(zip(paths, [1000, 100, 512])):
    af.write_index_wav(path, frames, file_id=i + 1)
  reader = audio.FileReader()
  infos = [reader.probe(p) for p in paths]
  source = audio.AudioClipSource(reader, infos, sample_len=256, sample_rate=8000, is_stereo=True)
  # 1000 frames -> 3 clips (tail of 232 dropped); 100 -> 1 padded clip; 512 -> 2 clips.
  assert len(source) == 6 and source.num_padded_items == 1
  expected = [(1, 0), (1, 256), (1, 512), (2, 0), (3, 0), (3, 256)]
  for index, (file_id, start) in enumerate(expected):
    clip = source[index]
    chex.assert_shape(clip, (256, 2))
    assert af.decode_index(clip[0, 0]) == (file_id, start)
    np.testing.assert_array_equal(clip[:, 1], -clip[:, 0])
  padded = source[3]
  assert af.decode_index(padded[99, 0]) == (2, 99)
  np.testing.assert_array_equal(padded[100:], 0.0)
  with pytest.raises(IndexError, match="out of range"):
    source.locate(6)


def test_clip_source_resampled_clips_match_whole_file(tmp_path):
  path = str(tmp_path / "r.wav")
  af.write_audio(path, 12000, channels=2, sample_rate=12000, subtype="FLOAT")
  reader = audio.FileReader()
  source = audio.AudioClipSource(reader, [reader.probe(path)], sample_len=500, sample_rate=8000,
                                 is_stereo=True)
  assert len(source) == 16  # 12000 frames at 12 kHz = 8000 frames at 8 kHz
  whole = audio.load_audio(path, sample_rate=8000, is_stereo=True)
  clips = np.concatenate([source[i] for i in range(len(source))])
  np.testing.assert_allclose(clips[:-50], whole[:8000 - 50], atol=1e-4)


def test_clip_source_substitutes_failed_reads(tmp_path, caplog):
  paths = [str(tmp_path / f"f{i}.wav") for i in range(3)]
  for i, path in enumerate(paths):
    af.write_index_wav(path, 512, file_id=i + 1)
  reader = audio.FileReader()
  source = audio.AudioClipSource(reader, [reader.probe(p) for p in paths], sample_len=256,
                                 sample_rate=8000, is_stereo=True)
  os.remove(paths[1])  # the file breaks after probing
  caplog.set_level(logging.WARNING)
  clip = source[3]                            # clip 1 of f1 -> first clip of f2
  assert af.decode_index(clip[0, 0]) == (3, 0)
  np.testing.assert_array_equal(clip, source[4])
  np.testing.assert_array_equal(source[3], clip)  # deterministic
  assert source.substitutions == 2
  assert any("f1.wav" in m and "substituting another clip" in m for m in _warnings(caplog))
  for path in paths:
    if os.path.exists(path):
      os.remove(path)
  with pytest.raises(RuntimeError, match="every substitute tried failed"):
    source[0]


def test_sequence_reader(caplog):
  rng = np.random.default_rng(0)
  items = [(rng.standard_normal((600, 2)) * 1000).astype(np.int16),
           {"audio": rng.uniform(-1, 1, 300).astype(np.float32)},
           "not audio",
           np.zeros((0, 2), np.float32)]
  reader = audio.SequenceReader(items, sample_rate=8000)
  caplog.set_level(logging.WARNING)
  infos = audio.probe_all(reader, range(len(items)), description="list")
  assert [(i.key, i.frames, i.channels) for i in infos] == [(0, 600, 2), (1, 300, 1)]
  messages = _warnings(caplog)
  assert any(m.startswith("Skipping audio item 2: not audio") for m in messages), messages
  assert any(m.startswith("Skipping audio item 3: no audio frames") for m in messages)
  clip = reader.read(0, 100, 50)
  assert clip.dtype == np.float32
  np.testing.assert_allclose(clip, items[0][100:150] / 32768.0)


def _flip_middle_bytes(path, seed=0):
  data = bytearray(open(path, "rb").read())
  rng = np.random.default_rng(seed)
  for pos in rng.integers(len(data) // 4, len(data) * 3 // 4, 8):
    data[pos] ^= 0xFF
  open(path, "wb").write(bytes(data))


def test_non_finite_samples_are_found_when_reading(tmp_path, caplog):
  data = af.tone(4000, 2)
  data[1500, 1] = np.nan
  data[2500, 0] = np.inf
  middle = str(tmp_path / "nan_middle.wav")
  sf.write(middle, data, 8000, subtype="FLOAT")
  tail = af.tone(4000, 2)
  tail[-10, 0] = -np.inf
  at_end = str(tmp_path / "inf_tail.wav")
  sf.write(at_end, tail, 8000, subtype="FLOAT")
  reader = audio.FileReader()
  reader.probe(middle)  # the tail probe cannot see it ...
  with pytest.raises(audio.BadAudioError, match=r"non-finite samples: 1 NaN and 1 infinite, "
                                                r"the first at frame 1500"):
    reader.read(middle, 1000, 2000)  # ... reading can.
  np.testing.assert_array_equal(reader.read(middle, 0, 1000), data[:1000])
  with pytest.raises(audio.BadAudioError, match="non-finite"):
    reader.probe(at_end)
  caplog.set_level(logging.WARNING)
  assert audio.probe_all(reader, [middle, at_end], description="d", verify="full") == []
  messages = _warnings(caplog)
  assert any(m.startswith(f"Skipping audio {middle}: non-finite samples") for m in messages)
  seq = audio.SequenceReader([data], sample_rate=8000)
  with pytest.raises(audio.BadAudioError, match="non-finite"):
    seq.read(0, 0, 4000)


def test_verify_audio_full_skips_files_damaged_in_the_middle(tmp_path, caplog):
  good = str(tmp_path / "good.flac")
  damaged = str(tmp_path / "damaged.flac")
  af.write_audio(good, 40000, channels=2, sample_rate=8000)
  af.write_audio(damaged, 40000, channels=2, sample_rate=8000, seed=1)
  _flip_middle_bytes(damaged)
  reader = audio.FileReader()
  caplog.set_level(logging.WARNING)
  tail = audio.probe_all(reader, [good, damaged], description="d", verify="tail")
  assert [i.key for i in tail] == [good, damaged]  # the tail probe passes it ...
  full = audio.probe_all(reader, [good, damaged], description="d", verify="full", num_threads=2)
  assert [i.key for i in full] == [good]  # ... full verification skips it by name.
  assert any(m.startswith(f"Skipping audio {damaged}: could not decode") for m in _warnings(caplog))
  with pytest.raises(ValueError, match="verify_audio='most'"):
    audio.probe_all(reader, [good], description="d", verify="most")


def test_substitution_warnings_once_per_file_with_counts_at_each_report(tmp_path, caplog):
  paths = [str(tmp_path / f"g{i}.wav") for i in range(3)]
  for i, path in enumerate(paths):
    af.write_index_wav(path, 1024, file_id=i + 1)
  reader = audio.FileReader()
  source = audio.AudioClipSource(reader, [reader.probe(p) for p in paths], sample_len=256,
                                 sample_rate=8000, is_stereo=True)
  audio.report_substitutions()  # reset counts from other tests.
  os.remove(paths[1])
  caplog.set_level(logging.WARNING)
  for index in (4, 5, 6, 4):  # four failed reads of g1.wav
    source[index]
  per_read = [m for m in _warnings(caplog) if "g1.wav" in m and "substituting" in m]
  assert len(per_read) == 1, per_read
  caplog.clear()
  assert audio.report_substitutions() == {paths[1]: 4}
  (summary,) = _warnings(caplog)
  assert "Substituted 4 unreadable clip(s)" in summary and f"{paths[1]}: 4" in summary
  assert audio.report_substitutions() == {}  # counted since the last report only.
