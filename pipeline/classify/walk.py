"""Listing the images of a folder: one deterministic, streamed order on every machine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def walk(root: Path, extensions: tuple[str, ...], recursive: bool = True) -> Iterator[str]:
    """Yield image paths relative to `root`, sorted, depth-first, following links without loops.

    Sorting each folder's entries by name gives one deterministic order on every machine. Folders
    are identified by (device, inode), so a symbolic link back to an ancestor is visited once.
    """
    exts = {"." + e.lower().lstrip(".") for e in extensions}
    seen: set[tuple[int, int]] = set()

    def visit(folder: str, rel: str) -> Iterator[str]:
        try:
            info = os.stat(folder)
        except OSError:
            return
        key = (info.st_dev, info.st_ino)
        if key in seen:
            return
        seen.add(key)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            rel_path = f"{rel}{entry.name}"
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                if recursive:
                    yield from visit(entry.path, rel_path + "/")
            elif os.path.splitext(entry.name)[1].lower() in exts:
                yield rel_path

    yield from visit(os.fsdecode(root), "")
