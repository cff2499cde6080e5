"""Listing the images of a folder: one deterministic, streamed order on every machine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from operator import attrgetter
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
                entries = sorted(it, key=attrgetter("name"))
        except OSError:
            return
        for entry in entries:
            name = entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                if recursive:
                    yield from visit(entry.path, f"{rel}{name}/")
            elif suffix(name) in exts:
                yield rel + name

    yield from visit(os.fsdecode(root), "")


def suffix(name: str) -> str:
    """`os.path.splitext(name)[1].lower()`: from the last dot, unless only dots precede it (".png"
    is a hidden file's name, not an extension). A folder of millions of scans asks it of every
    name, in the process that writes the CSV, where splitext was a large share of the walk."""
    dot = name.rfind(".")
    if dot <= 0 or (name[0] == "." and not name[:dot].lstrip(".")):
        return ""
    return name[dot:].lower()
