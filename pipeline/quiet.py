"""Import TensorFlow-backed libraries without their start-up chatter on stderr.

TensorFlow 2.21 writes absl and oneDNN notices straight to file descriptor 2 at import time, and
no environment variable silences them; a user would see four lines of noise before every stage's
own output, and a user error would no longer be one line. The notices are dropped by pointing fd 2
at /dev/null for the import only; Python exceptions raised by the import still propagate.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextmanager
def stderr_silenced() -> Iterator[None]:
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # captured stderr (tests): nothing to silence
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def load(name: str) -> ModuleType:
    """`importlib.import_module(name)` with TensorFlow's import-time notices dropped."""
    if name in sys.modules:
        return sys.modules[name]
    with stderr_silenced():
        if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow" and "tensorflow" not in sys.modules:
            importlib.import_module("tensorflow")
        return importlib.import_module(name)
