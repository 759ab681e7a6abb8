"""The entry points' console filter drops library INFO records but keeps warnings and our own."""

import logging
import os

from sashimi_jax import console


def _record(pathname, level):
  return logging.LogRecord("absl", level, pathname, 1, "message", None, None)


def test_library_info_is_dropped_but_warnings_and_own_logs_pass():
  drop = console._DropLibraryInfo()
  orbax_file = os.path.join("site-packages", "orbax", "checkpoint", "checkpoint_manager.py")
  jax_file = os.path.join("site-packages", "jax", "_src", "xla_bridge.py")
  own_file = os.path.join("sashimi_jax", "train.py")
  assert not drop.filter(_record(orbax_file, logging.INFO))
  assert not drop.filter(_record(jax_file, logging.INFO))
  assert drop.filter(_record(orbax_file, logging.WARNING))
  assert drop.filter(_record(own_file, logging.INFO))
