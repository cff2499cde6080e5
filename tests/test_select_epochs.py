"""scripts/select_epochs.py: the release schedule is chosen on validation runs alone, by its rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "select_epochs.py"


def _run(
    root: Path, epochs: int, seed: int, val: list[float], finished: bool = True, test: float = 0.5
) -> None:
    run = root / f"sel-e{epochs}-s{seed}"
    run.mkdir(parents=True)
    (run / "history.json").write_text(json.dumps({"val_accuracy": val}))
    if finished:
        (run / "metrics.json").write_text(json.dumps({"test_accuracy": test}))


def _select(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True)


def test_highest_mean_final_validation_accuracy_wins_and_test_accuracy_is_ignored(tmp_path: Path) -> None:
    # 30 epochs: best *peak* validation and best test accuracy, but a lower final-epoch mean.
    _run(tmp_path, 30, 1, [0.99, 0.999, 0.993], test=0.999)
    _run(tmp_path, 30, 2, [0.99, 0.999, 0.993], test=0.999)
    _run(tmp_path, 60, 1, [0.99, 0.994, 0.996], test=0.9)
    _run(tmp_path, 60, 2, [0.99, 0.994, 0.994], test=0.9)
    done = _select(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "chosen epochs: 60"
    assert "mean 99.5000%" in done.stdout


def test_a_tie_goes_to_fewer_epochs(tmp_path: Path) -> None:
    for epochs in (60, 30, 100):
        for seed in (1, 2):
            _run(tmp_path, epochs, seed, [0.995])
    assert _select(tmp_path).stdout.strip().endswith("chosen epochs: 30")


@pytest.mark.parametrize("missing", ["unfinished", "seed"])
def test_a_candidate_without_every_seed_finished_is_not_chosen(tmp_path: Path, missing: str) -> None:
    _run(tmp_path, 30, 1, [0.99])
    _run(tmp_path, 30, 2, [0.99])
    _run(tmp_path, 100, 1, [0.999])
    if missing == "unfinished":
        _run(tmp_path, 100, 2, [0.999], finished=False)
    done = _select(tmp_path)
    assert "100 epochs  not a candidate" in done.stdout
    assert done.stdout.strip().endswith("chosen epochs: 30")


def test_nothing_finished_is_an_error(tmp_path: Path) -> None:
    _run(tmp_path, 30, 1, [0.99], finished=False)
    done = _select(tmp_path)
    assert done.returncode == 1 and "no candidate" in done.stderr
