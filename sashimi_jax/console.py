"""Console hygiene for the entry points: keep library INFO chatter out of the progress output."""

import logging
import os
import re
import sys
from typing import Sequence

from absl import flags
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


_UNKNOWN_FIELD = re.compile(r"'([^']+)'(?:.*?Did you mean \"([^\"]+)\")?", re.DOTALL)


def _override_error(argv: Sequence[str], error: Exception) -> str:
  """One line for a `--config.a.b=v` override naming a field the config does not have."""
  text = str(error.args[0]) if error.args else str(error)
  match = _UNKNOWN_FIELD.search(text.replace("\\'", "'").replace("\\n", "\n"))
  field = match.group(1) if match else text
  suggestion = match.group(2) if match else None
  flag = next((a.split("=", 1)[0] for a in argv[1:]
               if a.startswith("--config.") and field in a.split("=", 1)[0].split(".")), None)
  where = f"{flag}: " if flag else ""
  hint = f" (did you mean {suggestion!r}?)" if suggestion else ""
  return f"{where}the config has no field {field!r}{hint}"


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl flag parsing for the entry points: a bad flag or config override is one line, exit 1.

  Pass as `app.run(main, flags_parser=console.parse_flags)`. absl's own parser prints a bad
  value over two lines, and an unknown `--config.` field (a typo such as `d_modle`) escapes it
  as an AttributeError with a 20-line traceback.
  """
  program = os.path.basename(argv[0]) if argv else "sashimi_jax"
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"{program}: error: {e}")
  except (AttributeError, KeyError) as e:  # ml_collections: an override of a missing field.
    sys.exit(f"{program}: error: {_override_error(argv, e)}")
