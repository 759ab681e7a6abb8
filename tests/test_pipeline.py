"""Tests for sashimi_jax/data/pipeline.py: transforms, splits, determinism, resume, sharding, errors."""

import logging
import os

import chex
import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
import soundfile as sf

from sashimi_jax.data import pipeline
from sashimi_jax.data import quantize
import audio_fixtures as af


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["x"], y["x"])
    np.testing.assert_array_equal(x["y"], y["y"])


def _write_level_files(root, levels, *, num_frames=64, sample_rate=8000):
  """One file per clip, each a constant level (its identity) on both channels."""
  for i, level in enumerate(levels):
    sf.write(os.path.join(str(root), f"c{i:03d}.wav"),
             np.full((num_frames, 2), level, np.float32), sample_rate, subtype="FLOAT")


def _level_config(root, **kw):
  # linear 8-bit, no normalization: the first target token names the clip.
  return af.dataset_config(root, sample_len=64, quantization="linear", normalize=False,
                           valid_fraction=0.0, test_fraction=0.0, **kw)


_LEVELS = np.linspace(-0.9, 0.9, 12)


def _clip_ids(batch):
  codes = quantize.encode(_LEVELS, 8, "linear")
  return [int(np.flatnonzero(codes == row[0])[0]) for row in batch["y"]]


# ---------------------------------------------------------------- per-clip transforms

@pytest.mark.parametrize("strategy", ["temporal", "blocking", "blocking-3"])
@pytest.mark.parametrize("method", ["mu-law", "linear"])
def test_encode_decode_stereo(strategy, method):
  cfg = af.dataset_config(interleaving_strategy=strategy, quantization=method, normalize=False,
                          bits=16)
  clip = af.tone(10, 2)
  tokens = pipeline.encode_clip(clip, cfg)
  chex.assert_shape(tokens, (20,))
  assert tokens.dtype == np.int32
  # The stream order written out by hand from the README's table, not through stereo.py.
  block = {"temporal": 1, "blocking": 10}.get(strategy) or int(strategy.split("-")[1])
  by_hand = np.concatenate([np.concatenate([clip[s:s + block, 0], clip[s:s + block, 1]])
                            for s in range(0, 10, block)])
  np.testing.assert_array_equal(tokens, quantize.encode(by_hand, 16, method))
  back = pipeline.decode_tokens(tokens[None], cfg)
  chex.assert_shape(back, (1, 10, 2))
  np.testing.assert_allclose(back[0], clip, atol=1e-3)


def test_encode_mono_and_normalize_joint():
  cfg = af.dataset_config(is_stereo=False, normalize=True, quantization="linear")
  clip = af.tone(32, 1) * 0.1
  tokens = pipeline.encode_clip(clip, cfg)
  chex.assert_shape(tokens, (32,))
  assert tokens.min() == 0 and tokens.max() == 255      # stretched to the full range
  chex.assert_shape(pipeline.decode_tokens(tokens, cfg), (32, 1))
  stereo_cfg = af.dataset_config(normalize=True, quantization="linear")
  two = np.stack([clip[:, 0], 0.25 * clip[:, 0]], axis=-1)
  decoded = pipeline.decode_tokens(pipeline.encode_clip(two, stereo_cfg), stereo_cfg)
  ratio = np.ptp(decoded[:, 1]) / np.ptp(decoded[:, 0])
  assert abs(ratio - 0.25) < 0.03                        # inter-channel level kept
  with pytest.raises(ValueError, match=r"shape \(L, 2\) for a stereo config, got \(32, 1\)"):
    pipeline.encode_clip(clip, stereo_cfg)


def test_examples_are_shifted_targets(tmp_path):
  af.make_folder(tmp_path, 3)
  cfg = af.dataset_config(tmp_path, valid_fraction=0.0, test_fraction=0.0)
  batch = next(pipeline.create_train_iterator(cfg, global_batch_size=2, seed=0))
  chex.assert_shape([batch["x"], batch["y"]], (2, 512))
  assert batch["x"].dtype == np.int32 and batch["y"].dtype == np.int32
  np.testing.assert_array_equal(batch["x"][:, 0], quantize.zero_token(8))
  np.testing.assert_array_equal(batch["x"][:, 1:], batch["y"][:, :-1])


# ---------------------------------------------------------------- splits

def test_split_reference_fractions_and_few_files():
  items = list(range(100))
  parts = {s: pipeline.split_items(items, s, valid_fraction=0.06, test_fraction=0.06)
           for s in pipeline.SPLITS}
  assert parts == {"train": items[:88], "valid": items[88:94], "test": items[94:]}
  parts = {s: pipeline.split_items([0, 1, 2], s, valid_fraction=0.06, test_fraction=0.06)
           for s in pipeline.SPLITS}
  assert parts == {"train": [0], "valid": [1], "test": [2]}
  assert pipeline.split_items([0, 1], "validation", valid_fraction=0.1, test_fraction=0.0) == [1]
  assert pipeline.split_items([0, 1], "test", valid_fraction=0.1, test_fraction=0.0) == []
  with pytest.raises(ValueError, match="Only 2 usable audio item.*need at least 3"):
    pipeline.split_items([0, 1], "train", valid_fraction=0.1, test_fraction=0.1)
  with pytest.raises(ValueError, match="Unknown split 'dev'"):
    pipeline.split_items(items, "dev", valid_fraction=0.1, test_fraction=0.1)


def test_splits_are_disjoint_by_file(tmp_path):
  af.make_folder(tmp_path, 10, num_frames=600)
  cfg = af.dataset_config(tmp_path)
  keys = {s: [i.key for i in pipeline.build_clip_source(cfg, s).infos] for s in pipeline.SPLITS}
  assert [len(keys[s]) for s in pipeline.SPLITS] == [6, 2, 2]
  assert sorted(sum(keys.values(), [])) == sorted(str(tmp_path / f"a{i}.wav") for i in range(10))
  assert keys["valid"] == [str(tmp_path / "a6.wav"), str(tmp_path / "a7.wav")]  # file order


# ---------------------------------------------------------------- determinism and resume

@pytest.fixture(name="folder")
def _folder(tmp_path):
  af.make_folder(tmp_path, 4, num_frames=2000)
  return str(tmp_path)


def test_deterministic_and_seeded(folder):
  cfg = af.dataset_config(folder, valid_fraction=0.0, test_fraction=0.0)
  a = _take(pipeline.create_train_iterator(cfg, global_batch_size=4, seed=1), 6)
  b = _take(pipeline.create_train_iterator(cfg, global_batch_size=4, seed=1), 6)
  c = _take(pipeline.create_train_iterator(cfg, global_batch_size=4, seed=2), 6)
  _assert_same_batches(a, b)
  assert any(not np.array_equal(x["y"], z["y"]) for x, z in zip(a, c))


def test_resume_from_state(folder):
  cfg = af.dataset_config(folder, valid_fraction=0.0, test_fraction=0.0)
  it = pipeline.create_train_iterator(cfg, global_batch_size=4, seed=3)
  _take(it, 5)
  state = it.get_state()
  uninterrupted = _take(it, 8)       # crosses the 28-clip epoch boundary (7 batches per epoch)
  resumed_it = pipeline.create_train_iterator(cfg, global_batch_size=4, seed=3)
  resumed_it.set_state(state)
  _assert_same_batches(_take(resumed_it, 8), uninterrupted)


def test_resume_through_orbax(folder, tmp_path):
  cfg = af.dataset_config(folder, valid_fraction=0.0, test_fraction=0.0)
  it = pipeline.create_train_iterator(cfg, global_batch_size=2, seed=4)
  _take(it, 3)
  directory = str(tmp_path / "ckpt")
  with ocp.CheckpointManager(directory) as manager:
    manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
  expected = _take(it, 4)
  fresh = pipeline.create_train_iterator(cfg, global_batch_size=2, seed=4)
  with ocp.CheckpointManager(directory) as manager:
    assert manager.latest_step() == 3
    restored = manager.restore(
        3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))["data"]
  _assert_same_batches(_take(restored, 4), expected)


def test_workers_same_batches_and_resume(folder):
  """Two worker processes give the in-process batches, and their state rewinds exactly.

  One worker iterator only: spawning workers costs seconds (each imports grain and jax).
  """
  cfg = af.dataset_config(folder, valid_fraction=0.0, test_fraction=0.0, num_workers=2)
  in_process = _take(pipeline.create_train_iterator(cfg, global_batch_size=2, seed=5,
                                                    num_workers=0), 6)
  it = pipeline.create_train_iterator(cfg, global_batch_size=2, seed=5)
  try:
    _assert_same_batches(_take(it, 3), in_process[:3])
    state = it.get_state()
    assert len(state["iterators_in_use_states"]) == 2  # really two workers
    _assert_same_batches(_take(it, 3), in_process[3:])
    it.set_state(state)
    _assert_same_batches(_take(it, 3), in_process[3:])
  finally:
    it.close()


# ---------------------------------------------------------------- sharding

def test_process_shards_are_disjoint_and_cover(tmp_path):
  _write_level_files(tmp_path, _LEVELS)
  cfg = _level_config(tmp_path)
  seen = []
  for index in range(3):
    it = pipeline.create_train_iterator(cfg, global_batch_size=6, seed=0, process_index=index,
                                        process_count=3)
    ids = sum((_clip_ids(b) for b in _take(it, 2)), [])  # one epoch of this 4-clip shard
    assert len(set(ids)) == 4, ids
    seen.append(set(ids))
  assert set.union(*seen) == set(range(12))
  assert sum(len(s) for s in seen) == 12


def test_epochs_cover_every_clip_reshuffled(tmp_path):
  _write_level_files(tmp_path, _LEVELS)
  it = pipeline.create_train_iterator(_level_config(tmp_path), global_batch_size=4, seed=0)
  epochs = [sum((_clip_ids(b) for b in _take(it, 3)), []) for _ in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(12))
  assert epochs[0] != epochs[1] or epochs[1] != epochs[2]


def test_batch_and_shard_errors(tmp_path):
  _write_level_files(tmp_path, _LEVELS[:2])
  cfg = _level_config(tmp_path)
  with pytest.raises(ValueError, match="global_batch_size=3 must be a positive multiple of the "
                                       "process count 2"):
    pipeline.create_train_iterator(cfg, global_batch_size=3, seed=0, process_index=0,
                                   process_count=2)
  with pytest.raises(ValueError, match="2 clip\\(s\\), fewer than the 4 processes"):
    pipeline.create_train_iterator(cfg, global_batch_size=4, seed=0, process_index=0,
                                   process_count=4)
  with pytest.raises(ValueError, match="process_index=2 must be in \\[0, process_count=2\\)"):
    pipeline.create_train_iterator(cfg, global_batch_size=4, seed=0, process_index=2,
                                   process_count=2)


# ---------------------------------------------------------------- evaluation batches

def test_eval_batches_deterministic_and_sharded(tmp_path):
  _write_level_files(tmp_path, _LEVELS)
  cfg = _level_config(tmp_path)
  full = pipeline.create_eval_batches(cfg, split="train", global_batch_size=4, max_batches=None)
  assert len(full) == 3
  assert sum((_clip_ids(b) for b in full), []) == list(range(12))  # in order, no shuffle
  assert len(pipeline.create_eval_batches(cfg, split="train", global_batch_size=4,
                                          max_batches=2)) == 2
  halves = [pipeline.create_eval_batches(cfg, split="train", global_batch_size=4, max_batches=None,
                                         process_index=p, process_count=2) for p in range(2)]
  for b in range(3):
    assert _clip_ids(halves[0][b]) + _clip_ids(halves[1][b]) == _clip_ids(full[b])
  _assert_same_batches(list(full), list(full))
  small = pipeline.create_eval_batches(cfg, split="train", global_batch_size=16, max_batches=5)
  assert len(small) == 1 and _clip_ids(small[0]) == list(range(12)) + [0, 1, 2, 3]


def test_eval_empty_split_error(tmp_path):
  _write_level_files(tmp_path, _LEVELS[:3])
  with pytest.raises(ValueError, match="Split 'test' is empty"):
    pipeline.create_eval_batches(_level_config(tmp_path), split="test", global_batch_size=2)


# ---------------------------------------------------------------- sources and bad input

def test_sequence_source_like_tfds():
  rng = np.random.default_rng(0)
  items = [{"audio": (rng.standard_normal((300, 2)) * 3000).astype(np.int16)} for _ in range(5)]
  cfg = af.dataset_config(sample_len=100, valid_fraction=0.0, test_fraction=0.0)
  batch = next(pipeline.create_train_iterator(cfg, global_batch_size=3, seed=0, source=items))
  chex.assert_shape(batch["y"], (3, 200))
  evals = pipeline.create_eval_batches(cfg, split="train", global_batch_size=3, source=items)
  assert len(evals) == 5  # 15 clips


def test_default_path_is_demo_data(tmp_path, monkeypatch):
  af.make_folder(tmp_path, 3)
  monkeypatch.setattr(pipeline, "DEMO_DATA_DIR", str(tmp_path))
  clips = pipeline.build_clip_source(af.dataset_config(""), "train")
  assert [i.key for i in clips.infos] == [str(tmp_path / "a0.wav")]
  assert pipeline.DEMO_DATA_DIR != os.path.join(os.path.dirname(pipeline.__file__), "demo_data")


def test_bad_files_skipped_reported_once(tmp_path, caplog):
  af.make_folder(tmp_path, 3)
  (tmp_path / "empty.wav").write_bytes(b"")
  (tmp_path / "notes.flac").write_text("not audio at all\n" * 10)
  af.write_audio(tmp_path / "cut.flac", 4000)
  af.truncate(tmp_path / "cut.flac", 0.5)
  af.write_audio(tmp_path / "cut2.wav", 4000)
  af.truncate(tmp_path / "cut2.wav", 0.5)
  (tmp_path / "README.md").write_text("ignored quietly")
  caplog.set_level(logging.INFO)
  it = pipeline.create_train_iterator(af.dataset_config(tmp_path), global_batch_size=2, seed=0)
  chex.assert_shape(next(it)["y"], (2, 512))
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  for name, reason in [("empty.wav", "empty file (0 bytes)"),
                       ("notes.flac", "not a recognised audio format"),
                       ("cut.flac", "truncated"), ("cut2.wav", "truncated")]:
    assert sum(m == f"Skipping audio {tmp_path / name}: " + m.split(": ", 1)[1] and
               m.split(": ", 1)[1].startswith(reason) for m in warnings) == 1, (name, warnings)
  summary = [m for m in warnings if m.startswith("Audio source")]
  assert len(summary) == 1 and "3 usable, skipped 4 bad" in summary[0]
  assert not any("README.md" in m for m in warnings)


def test_missing_and_unusable_sources(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    pipeline.create_train_iterator(af.dataset_config(tmp_path / "nope"), global_batch_size=2,
                                   seed=0)
  with pytest.raises(ValueError, match="No audio in .*no file with an audio extension") as empty:
    pipeline.create_train_iterator(af.dataset_config(tmp_path), global_batch_size=2, seed=0)
  assert "warnings" not in str(empty.value)  # nothing was warned about.
  (tmp_path / "bad.wav").write_text("nope")
  with pytest.raises(ValueError, match="No usable audio in .*1 candidate.*see the warnings above"):
    pipeline.create_eval_batches(af.dataset_config(tmp_path), split="valid", global_batch_size=2)


def test_config_mismatches_are_errors(tmp_path):
  af.make_folder(tmp_path, 2, channels=2)
  af.write_audio(tmp_path / "mono.wav", 4000, channels=1)
  with pytest.raises(ValueError, match="mono.wav is mono but the config is stereo"):
    pipeline.build_clip_source(af.dataset_config(tmp_path), "train")
  clips = pipeline.build_clip_source(
      af.dataset_config(tmp_path, mono_to_stereo="duplicate"), "train")
  chex.assert_shape(clips[0], (256, 2))
  af.write_audio(tmp_path / "surround.wav", 4000, channels=3)
  with pytest.raises(ValueError, match="surround.wav has 3 channels"):
    pipeline.build_clip_source(af.dataset_config(tmp_path, mono_to_stereo="duplicate"), "train")
  os.remove(tmp_path / "surround.wav")
  af.write_audio(tmp_path / "fast.wav", 8000, channels=2, sample_rate=16000)
  cfg = af.dataset_config(tmp_path, mono_to_stereo="duplicate", resample=False)
  with pytest.raises(ValueError, match="fast.wav is at 16000 Hz but dataset.sample_rate=8000"):
    pipeline.build_clip_source(cfg, "train")
  cfg.resample = True
  mono_cfg = af.dataset_config(tmp_path, is_stereo=False, valid_fraction=0.0, test_fraction=0.0)
  clips = pipeline.build_clip_source(mono_cfg, "train")
  assert len(clips) == 4 * (4000 // 256)  # fast.wav: 8000 frames at 16 kHz = 4000 at 8 kHz
  chex.assert_shape(clips[len(clips) - 1], (256, 1))
  with pytest.raises(ValueError, match="Unknown interleaving strategy 'blocking-0'"):
    pipeline.build_clip_source(af.dataset_config(tmp_path, interleaving_strategy="blocking-0"),
                               "train")


def test_one_file_is_split_by_time_without_overlap(tmp_path):
  af.write_index_wav(tmp_path / "only.wav", 10_000, file_id=3)
  cfg = af.dataset_config(tmp_path / "only.wav", valid_fraction=0.1, test_fraction=0.2,
                          normalize=False)
  sources = pipeline.split_sources(cfg)
  assert sources["by_time"]
  frames = {}
  for split in pipeline.SPLITS:
    (info,) = sources[split].infos
    frames[split] = (info.offset_frames, info.offset_frames + info.frames)
    clips = sources[split]
    first = af.decode_index(clips[0][0, 0])
    last = af.decode_index(clips[len(clips) - 1][-1, 0])
    assert first == (3, info.offset_frames), split  # clips start where the stretch starts,
    assert last[1] < info.offset_frames + info.frames, split  # and never cross its end.
  assert frames == {"train": (0, 7000), "valid": (7000, 8000), "test": (8000, 10_000)}
  assert "[0.00-0.88 s]" in sources["train"].infos[0].name
  # Two files and three splits: by time as well; with test_fraction=0, two files split by file.
  af.write_index_wav(tmp_path / "more" / "a.wav", 4000, file_id=1)
  af.write_index_wav(tmp_path / "more" / "b.wav", 4000, file_id=2)
  assert pipeline.split_sources(af.dataset_config(tmp_path / "more"))["by_time"]
  by_file = pipeline.split_sources(af.dataset_config(tmp_path / "more", test_fraction=0.0))
  assert not by_file["by_time"] and len(by_file["test"]) == 0
  assert [i.offset_frames for i in by_file["valid"].infos] == [0]


def test_a_split_by_time_keeps_resampling_inside_its_stretch(tmp_path):
  af.write_index_wav(tmp_path / "fast.wav", 20_000, sample_rate=16000, file_id=5)
  cfg = af.dataset_config(tmp_path / "fast.wav", valid_fraction=0.25, test_fraction=0.0,
                          normalize=False)
  sources = pipeline.split_sources(cfg)
  valid = sources["valid"]
  (info,) = valid.infos
  assert (info.offset_frames, info.frames) == (15_000, 5000)
  clip = valid[0][:, 0]
  # The first valid clip resamples frames from 15000 on (16 kHz -> 8 kHz: every other frame).
  assert af.decode_index(clip[10])[1] == pytest.approx(15_000 + 20, abs=1)


def test_verify_audio_full_leaves_no_damaged_file_in_the_splits(tmp_path):
  paths = af.make_folder(tmp_path, 3, num_frames=40000, ext="flac")
  data = bytearray(open(paths[1], "rb").read())  # bytes flipped mid-file: the tail still decodes
  for pos in np.random.default_rng(0).integers(len(data) // 4, len(data) * 3 // 4, 8):
    data[pos] ^= 0xFF
  open(paths[1], "wb").write(bytes(data))
  tail = pipeline.build_clip_source(af.dataset_config(tmp_path, valid_fraction=0.0,
                                                      test_fraction=0.0), "train")
  assert [i.key for i in tail.infos] == paths
  full = pipeline.build_clip_source(af.dataset_config(tmp_path, valid_fraction=0.0,
                                                      test_fraction=0.0, verify_audio="full"),
                                    "train")
  assert [i.key for i in full.infos] == [paths[0], paths[2]]
  for index in range(len(full)):
    full[index]
  assert full.substitutions == 0
