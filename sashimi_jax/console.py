"""Console hygiene for the entry points: keep library INFO chatter out of the progress output."""

import logging
import os

from absl import logging as absl_logging

# Orbax logs every save and restore step at INFO, and JAX logs its backend probing; a training
# run's console should show its own progress. Warnings and errors from these still pass.
_CHATTY_LIBRARIES = (f"{os.sep}orbax{os.sep}", f"{os.sep}jax{os.sep}_src{os.sep}")


class _DropLibraryInfo(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    return not any(part in record.pathname for part in _CHATTY_LIBRARIES)


def quiet_library_logs() -> None:
  """Drops INFO/DEBUG records of Orbax and JAX internals from absl's console handler."""
  absl_logging.get_absl_handler().addFilter(_DropLibraryInfo())
