"""Checkpoint integrity: per-step manifests (size + CRC32 of every file), metadata checks, and
one-line causes for failed saves and restores.

Orbax has no checksum of its own files and reports a damaged or unwritable step through
TensorStore errors, asyncio noise and logged tracebacks; these helpers turn both into one line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import sys
import zlib

MANIFEST_FILE = "sashimi_manifest.json"


def one_line(error: BaseException, limit: int = 300) -> str:
  """`error` as one short line: its type and the first non-empty line of its message."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  text = f"{type(error).__name__}: {lines[0] if lines else repr(error)}"
  return text if len(text) <= limit else text[:limit - 3] + "..."


def os_errno(error: BaseException) -> int | None:
  """The errno behind a failed write: of an OSError in `error`'s cause/context chain, or the
  `os_error_code` TensorStore puts in its messages (Orbax writes arrays through TensorStore)."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, OSError) and error.errno is not None:
      return int(error.errno)
    match = re.search(r"os_error_code='?(\d+)", str(error))
    if match:
      return int(match.group(1))
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None


def write_failure_cause(error: BaseException) -> str:
  """Why a write failed, in a few words: `disk full (errno 28: ...)`, else `one_line(error)`."""
  code = os_errno(error)
  if code is None:
    return one_line(error)
  return f"{DISK_ERRNOS.get(code, os.strerror(code))} (errno {code}: {os.strerror(code)})"


class _DropOrbaxErrors(logging.Filter):
  """Drops Orbax's own ERROR records (with tracebacks) of a failure this module reports."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR
                and f"{os.sep}orbax{os.sep}" in (record.pathname or ""))


@contextlib.contextmanager
def quiet_orbax_failures():
  """Around a save or restore whose failure is reported in one line by this module."""
  _quiet_closed_loop_noise()
  absl_logger = logging.getLogger("absl")
  drop = _DropOrbaxErrors()
  absl_logger.addFilter(drop)
  try:
    yield
  finally:
    absl_logger.removeFilter(drop)


DISK_ERRNOS = {errno.ENOSPC: "disk full", errno.EROFS: "read-only file system",
                errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file size limit exceeded",
                errno.EIO: "input/output error"}


def _file_crc32(path: str) -> int:
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(1 << 22):
      crc = zlib.crc32(chunk, crc)
  return crc


def step_files(step_dir: str) -> list[str]:
  """Paths of every file under `step_dir` (relative, sorted), the manifest excluded."""
  found = []
  for root, _, files in os.walk(step_dir):
    for name in files:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel != MANIFEST_FILE:
        found.append(rel)
  return sorted(found)


def write_manifest(step_dir: str) -> dict[str, list[int]]:
  """Records {relative path: [bytes, crc32]} of every file of a saved step in its manifest."""
  manifest = {rel: [os.path.getsize(os.path.join(step_dir, rel)),
                    _file_crc32(os.path.join(step_dir, rel))] for rel in step_files(step_dir)}
  tmp = os.path.join(step_dir, MANIFEST_FILE + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(manifest, f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(step_dir, MANIFEST_FILE))
  return manifest


def manifest_problem(step_dir: str) -> str | None:
  """Why a saved step differs from its manifest (a missing, resized or changed file), or None.

  A step without a manifest (saved by an older version) is not judged here: None.
  """
  path = os.path.join(step_dir, MANIFEST_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
    entries = {str(k): (int(v[0]), int(v[1])) for k, v in manifest.items()}
  except (OSError, ValueError, TypeError, IndexError, AttributeError) as e:
    return f"its manifest {MANIFEST_FILE} is unreadable ({one_line(e)})"
  for rel, (size, crc) in sorted(entries.items()):
    full = os.path.join(step_dir, rel)
    if not os.path.isfile(full):
      return f"file {rel} is missing"
    actual = os.path.getsize(full)
    if actual != size:
      return f"file {rel} has {actual} bytes, {size} when saved"
    try:
      if _file_crc32(full) != crc:
        return f"file {rel} changed since it was saved (CRC32 mismatch)"
    except OSError as e:
      return f"file {rel} is unreadable ({one_line(e)})"
  return None


_previous_unraisablehook = None


def _drop_closed_loop_noise(unraisable) -> None:
  """sys.unraisablehook: hides the "Event loop is closed" errors a failed Orbax restore leaves
  in TensorStore callbacks (harmless; the restore's own error is reported); passes the rest on."""
  value = unraisable.exc_value
  if isinstance(value, RuntimeError) and "Event loop is closed" in str(value):
    return
  (_previous_unraisablehook or sys.__unraisablehook__)(unraisable)


def _quiet_closed_loop_noise() -> None:
  global _previous_unraisablehook
  if sys.unraisablehook is not _drop_closed_loop_noise:
    _previous_unraisablehook = sys.unraisablehook
    sys.unraisablehook = _drop_closed_loop_noise


def metadata_problem(step_dir: str) -> str | None:
  """Why a step's JSON metadata files (Orbax's `_METADATA`, `_CHECKPOINT_METADATA`, `metadata`,
  the iterator's `*.json`) do not parse, or None (a cheap check, also for unmanifested steps)."""
  for rel in step_files(step_dir):
    if os.path.basename(rel) in ("_METADATA", "_CHECKPOINT_METADATA", "metadata") or (
        rel.endswith(".json")):
      try:
        with open(os.path.join(step_dir, rel), encoding="utf-8") as f:
          json.load(f)
      except (OSError, ValueError) as e:
        return f"metadata file {rel} does not parse ({one_line(e)})"
  return None
