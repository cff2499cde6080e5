"""Compare this checkout's preprocessing with an older revision's, on the same image files.

    .venv/bin/python scripts/compare_preprocess.py OLD_REV FOLDER [FOLDER ...] [--model M ...]

FOLDER holds files named like `pipeline data samples` writes them (`00042_7.jpg`: index, label).
The old revision is checked out in a temporary git worktree and run in its own process, so both
sides are timed the same way (one process, one core, files already in the page cache, the best of
`--repeats` passes). For each folder it prints: milliseconds per file for each side (and for PIL's
decode to grayscale alone, the floor), how many
28x28 digits are byte-identical, the mean absolute pixel difference, how many files change status
(digit / blank / error), and for each model both accuracies and how many predictions differ.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# Runs inside the process of either side: preprocess every file, save digits and statuses.
_DUMP = """
import os, sys, time
import numpy as np
from pipeline.errors import BlankImageError, ImageError
from pipeline.preprocess import load_digit, open_image, to_gray
folder, out, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
names = sorted(n for n in os.listdir(folder) if n.rsplit(".", 1)[-1] in ("jpg", "png", "bmp"))
best = float("inf")
for _ in range(repeats):
    digits, status = [], []
    started = time.perf_counter()
    for name in names:
        try:
            digits.append(load_digit(os.path.join(folder, name)))
            status.append("ok")
        except BlankImageError:
            digits.append(np.zeros((28, 28), np.uint8))
            status.append("blank")
        except ImageError:
            digits.append(np.zeros((28, 28), np.uint8))
            status.append("error")
    best = min(best, time.perf_counter() - started)
decode = float("inf")
for _ in range(repeats):  # the decode alone: open, header checks, pixels, grayscale
    started = time.perf_counter()
    for name in names:
        try:
            with open_image(os.path.join(folder, name)) as img:
                to_gray(img)
        except ImageError:
            pass
    decode = min(decode, time.perf_counter() - started)
np.savez(out, digits=np.stack(digits), status=np.array(status), names=np.array(names), seconds=best,
         decode_seconds=decode)
"""


def _dump(root: Path, folder: Path, out: Path, repeats: int) -> dict[str, np.ndarray]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-c", _DUMP, str(folder), str(out), str(repeats)]
    subprocess.run(cmd, check=True, env=env, cwd=root)  # cwd: "-c" puts it first on sys.path
    with np.load(out) as f:
        return dict(f)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("old_rev")
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--model", action="append", type=Path, default=[])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        old_root = Path(tmp) / "old"
        subprocess.run(
            ["git", "-C", str(here), "worktree", "add", "-q", "--detach", str(old_root), args.old_rev],
            check=True,
        )
        try:
            if (old_root / "setup.py").is_file():  # a revision with compiled loops: build them there
                build = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
                subprocess.run(build, check=True, cwd=old_root, capture_output=True)
            for folder in args.folders:
                old = _dump(old_root, folder, Path(tmp) / "old.npz", args.repeats)
                new = _dump(here, folder, Path(tmp) / "new.npz", args.repeats)
                _report(folder, old, new, args.model)
        finally:
            subprocess.run(
                ["git", "-C", str(here), "worktree", "remove", "--force", str(old_root)], check=True
            )


def _report(folder: Path, old: dict[str, np.ndarray], new: dict[str, np.ndarray], models: list[Path]) -> None:
    from pipeline import preprocess, runtime

    n = len(old["names"])
    assert (old["names"] == new["names"]).all()
    labels = np.array([int(str(name).rsplit(".", 1)[0].split("_")[-1]) for name in new["names"]])
    same = (old["digits"] == new["digits"]).all(axis=(1, 2))
    diff = np.abs(old["digits"].astype(np.int16) - new["digits"].astype(np.int16)).mean()
    print(f"\n{folder} ({n} files)")
    for side, d in (("old", old), ("new", new)):
        total, decode = 1e3 * float(d["seconds"]) / n, 1e3 * float(d["decode_seconds"]) / n
        print(f"  {side}: {total:.3f} ms per file (decoding alone, at full size: {decode:.3f} ms)")
    print(f"  identical digits: {int(same.sum())}/{n}; mean |pixel difference| {diff:.2f} of 255")
    print(
        f"  status changed: {int((old['status'] != new['status']).sum())}"
        f" (blank: old {int((old['status'] == 'blank').sum())}, new {int((new['status'] == 'blank').sum())})"
    )
    for model in models:
        predictor = runtime.load(model)
        p_old = predictor.predict(preprocess.scale(old["digits"])).argmax(axis=1)
        p_new = predictor.predict(preprocess.scale(new["digits"])).argmax(axis=1)
        ok_old = (p_old == labels) & (old["status"] == "ok")
        ok_new = (p_new == labels) & (new["status"] == "ok")
        print(
            f"  {model.name}: accuracy old {ok_old.mean():.2%}, new {ok_new.mean():.2%};"
            f" predictions differ on {int((p_old != p_new).sum())}"
            f" (old right only {int((ok_old & ~ok_new).sum())},"
            f" new right only {int((ok_new & ~ok_old).sum())})"
        )


if __name__ == "__main__":
    main()
