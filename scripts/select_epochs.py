"""Choose the release members' epoch count from validation runs (scripts/device_train.sh).

Reads runs named sel-e<EPOCHS>-s<SEED> under a folder. A candidate counts only if every one of its
runs finished (metrics.json written) and every candidate has the same seeds; its score is the mean
over seeds of the final epoch's validation accuracy, because a release member trained on all
training images is used at its final epoch. The highest score wins; a tie goes to fewer epochs.
Never reads test accuracy. Prints a table and, last, `chosen epochs: E`; exit 1 if nothing qualifies.

    python scripts/select_epochs.py runs
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

NAME = re.compile(r"sel-e(\d+)-s(\d+)$")


def final_val_accuracy(run: Path) -> float | None:
    """The last epoch's validation accuracy of a finished run, None if it did not finish."""
    if not (run / "metrics.json").is_file():
        return None
    history = json.loads((run / "history.json").read_text())
    values = history.get("val_accuracy") or []
    return float(values[-1]) if values else None


def choose(root: Path) -> tuple[int | None, list[str]]:
    """The chosen epoch count (None if no candidate qualifies) and one report line per candidate."""
    scores: dict[int, dict[int, float | None]] = defaultdict(dict)
    for run in sorted(root.iterdir()):
        match = NAME.match(run.name)
        if match and run.is_dir():
            scores[int(match[1])][int(match[2])] = final_val_accuracy(run)
    all_seeds = set().union(*(set(s) for s in scores.values())) if scores else set()
    lines, qualified = [], {}
    for epochs in sorted(scores):
        per_seed = scores[epochs]
        shown = ", ".join(
            f"seed {s}: {'not finished' if v is None else f'{v:.4%}'}" for s, v in sorted(per_seed.items())
        )
        complete = set(per_seed) == all_seeds and all(v is not None for v in per_seed.values())
        if complete:
            qualified[epochs] = sum(v for v in per_seed.values() if v is not None) / len(per_seed)
            lines.append(f"{epochs:>4} epochs  mean {qualified[epochs]:.4%}  ({shown})")
        else:
            lines.append(f"{epochs:>4} epochs  not a candidate  ({shown})")
    if not qualified:
        return None, lines
    best = max(qualified.values())
    return min(e for e, v in qualified.items() if v == best), lines


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else "runs")
    if not root.is_dir():
        print(f"{root}: no such folder of runs", file=sys.stderr)
        return 1
    chosen, lines = choose(root)
    print("final-epoch validation accuracy (10% of the training images held out)")
    print("\n".join(lines))
    if chosen is None:
        print("no candidate finished on every seed", file=sys.stderr)
        return 1
    print(f"chosen epochs: {chosen}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
