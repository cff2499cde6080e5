"""Small file helpers shared by every stage: atomic writes and hashing.

Outputs are never half-written: everything goes to a temporary name in the same folder (same
file system, so the final `os.replace` is atomic) and is renamed once complete.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pipeline.errors import OutputError

_UMASK = os.umask(0)
os.umask(_UMASK)


# Errors that only writing raises: inside a block that writes an output they are that output's
# failure (an OSError of another kind there, a file the block reads, is left as it is).
WRITE_FAILURES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def cannot_write(path: Path, exc: OSError) -> OutputError:
    """The one line a failed write of `path` gives the user."""
    return OutputError(f"{path}: cannot write ({exc.strerror or exc})")


@contextmanager
def atomic_path(path: Path, suffix: str = ".part") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.
    A full disk, a quota or a read-only or unwritable folder is an OutputError naming `path`.
    `suffix` ends the temporary name, for writers that choose the format by it (Keras, matplotlib)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise cannot_write(path, exc) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in WRITE_FAILURES:
            raise cannot_write(path, exc) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_open(path: Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_json(path: Path, data: Any) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar_json(model: Path, name: str) -> dict[str, Any]:
    """A model's `<stem>.<name>` beside it (exported/bncnn.metrics.json, for shipped models), else
    its run folder's `<name>` (runs/x/metrics.json); empty when neither exists."""
    for candidate in (model.with_name(f"{model.stem}.{name}"), model.parent / name):
        if candidate.is_file():
            loaded = json.loads(candidate.read_text())
            return loaded if isinstance(loaded, dict) else {}
    return {}
