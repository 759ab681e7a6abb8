"""A prepared TFDS dataset, by name, as a random-access sequence of audio arrays (no TensorFlow).

`tfds.data_source(name, split=, data_dir=)` reads a dataset prepared in the ArrayRecord format
(`tfds build NAME --file_format=array_record`, or `builder.download_and_prepare(file_format=
"array_record")`) without the TensorFlow runtime, for features stored as tensors (e.g.
`tfds.features.Tensor(shape=(None,) or (None, C), dtype=int16 or float32)`). Datasets whose audio
is a `tfds.features.Audio` (speech_commands, nsynth, ...) need TensorFlow to be prepared and
decoded: install it next to the `tfds` extra (`pip install -e ".[tfds]" tensorflow`).

The items feed the same pipeline as folders (`audio.SequenceReader`): probed (bad items skipped
with a warning), split train | valid | test by `dataset.valid_fraction`/`test_fraction` in the
dataset's own order, sharded per process and shuffled by grain, with a checkpointable position.
Integer PCM is scaled to [-1, 1); items are taken to be at `dataset.sample_rate` unless the
feature declares another rate (then `dataset.resample` applies).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class TfdsAudio(Sequence):
  """Items of a TFDS `data_source` reduced to their audio feature: (frames,) or (frames, C)."""

  def __init__(self, name: str, *, split: str = "train", data_dir: str = "",
               audio_key: str = "audio"):
    self.name, self.split, self.data_dir, self.audio_key = name, split, data_dir, audio_key
    self._source = None
    source = self._open()
    features = source.dataset_info.features
    if audio_key not in features:
      raise ValueError(f"dataset.tfds_audio_key={audio_key!r} is not a feature of TFDS dataset "
                       f"{name!r}; its features: {', '.join(sorted(features.keys()))}.")
    self.sample_rate = getattr(features[audio_key], "sample_rate", None)
    self._length = len(source)

  def _open(self):
    if self._source is None:
      try:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ValueError(f"dataset.tfds_name={self.name!r} needs tensorflow-datasets: pip install "
                         f"-e '.[tfds]' ({e}).") from e
      try:
        self._source = tfds.data_source(self.name, split=self.split,
                                        data_dir=self.data_dir or None)
      except ImportError as e:  # e.g. a feature type whose decoding imports TensorFlow.
        raise ValueError(f"TFDS dataset {self.name!r} needs TensorFlow to be read ({e}); install "
                         "tensorflow, or store its audio as a tfds.features.Tensor.") from e
      except Exception as e:  # pylint: disable=broad-except  (tfds raises many kinds)
        where = f" in {self.data_dir}" if self.data_dir else ""
        first_line = (str(e).strip().splitlines() or [""])[0]  # tfds appends a long catalogue.
        raise FileNotFoundError(
            f"Cannot open TFDS dataset {self.name!r} split {self.split!r}{where} as ArrayRecord "
            f"({type(e).__name__}: {first_line}); prepare it first with "
            "file_format='array_record' and check dataset.tfds_data_dir.") from e
    return self._source

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> Any:
    return self._open()[index][self.audio_key]

  def __getstate__(self):  # grain workers reopen the source in their own process.
    state = dict(self.__dict__)
    state["_source"] = None
    return state

  def __repr__(self) -> str:
    return f"TFDS {self.name}[{self.split}]"
