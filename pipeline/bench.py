"""Benchmarks that print figures: artifacts (size, accuracy, latency), classify throughput and
memory, accuracy on rendered scans, and how fast the host makes augmented training batches.
Speed targets live here, never in timed tests.

Classify runs are measured as separate processes (`python -m pipeline classify`) so start-up
cost is counted as a user pays it, and peak memory is the peak of the summed proportional set
size (PSS) of the process and its workers, sampled from /proc: forked workers share pages, which
RSS would count once per process.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import data, defaults, preprocess, runtime
from pipeline.errors import PipelineError


@dataclass(frozen=True)
class ArtifactBench:
    path: Path
    bytes: int
    accuracy: float
    ms_batch1: float
    ms_batch256: float


def bench_artifacts(paths: list[Path], repeats: int = defaults.LATENCY_REPEATS) -> list[ArtifactBench]:
    """Size, test accuracy and median latency at batch 1 and 256 for each artifact."""
    from pipeline.verify import measure_latency

    images, labels = data.load(data.Split.TEST)
    x = preprocess.scale(images)
    out = []
    for path in paths:
        predictor = runtime.load(path)
        accuracy = float((predictor.predict(x).argmax(axis=1) == labels).mean())
        b1, b256 = defaults.LATENCY_BATCH_SIZES
        out.append(
            ArtifactBench(
                path,
                path.stat().st_size,
                accuracy,
                measure_latency(predictor, x, b1, repeats * 10),
                measure_latency(predictor, x, b256, repeats),
            )
        )
    return out


def make_digit_folder(folder: Path, count: int, per_dir: int = 10_000) -> Path:
    """`count` MNIST test digits as 28x28 PNG files, 10,000 per subfolder (reused if present)."""
    marker = folder / f".complete-{count}"
    if marker.exists():
        return folder
    from PIL import Image

    images, _ = data.load(data.Split.TEST)
    for i in range(count):
        sub = folder / f"{i // per_dir:03d}"
        if i % per_dir == 0:
            sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i % len(images)]).save(sub / f"{i:07d}.png", compress_level=6)
    marker.touch()
    return folder


def warm_cache(folder: Path) -> None:
    """Read every file once so that each contender finds them in the page cache: otherwise the
    first one measured pays the disk reads for all the others."""
    for path in folder.rglob("*.png"):
        path.read_bytes()


def _tree_pss_kib(pid: int) -> int:
    """Summed PSS of a process and all its descendants, in KiB (0 if it is gone)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return total


@dataclass(frozen=True)
class RunBench:
    name: str
    images: int
    seconds: float
    peak_mib: float

    @property
    def per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def _measure(name: str, cmd: list[str], images: int) -> RunBench:
    """Run `cmd`, timing it and sampling its process tree's memory every 20 ms."""
    peak = 0
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_pss_kib(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise PipelineError(f"benchmark step {name!r} failed: {stderr.strip().splitlines()[-1:]}")
    reported = [line for line in stdout.splitlines() if line.startswith("SECONDS ")]
    if reported:  # the step timed its own work (after imports)
        seconds = float(reported[-1].split()[1])
    return RunBench(name, images, seconds, peak / 1024)


# The three contenders, each a small program run as its own process.
_DECODE_ONLY = """
import sys, time
from pathlib import Path
from pipeline.classify.local import decoded_chunks
from pipeline.classify.walk import walk
root, workers = Path(sys.argv[1]), int(sys.argv[2])
t = time.perf_counter()
n = sum(len(c.paths) for c in decoded_chunks(root, walk(root, ("png",)), workers, 256, False, 10**8))
print("SECONDS", time.perf_counter() - t)
"""
_NAIVE = """
import sys, time, os
import numpy as np
import onnxruntime as ort
from PIL import Image
from pipeline.classify.walk import walk
root, model = sys.argv[1], sys.argv[2]
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
t = time.perf_counter()
with open(os.devnull, "w") as out:
    for rel in walk(root, ("png",)):
        x = np.asarray(Image.open(os.path.join(root, rel)).convert("L"), np.float32)[None, :, :, None] / 255
        p = session.run(None, {"image": x})[0][0]
        out.write(f"{rel},{int(p.argmax())}\\n")
print("SECONDS", time.perf_counter() - t)
"""


def bench_classify(
    model: Path,
    count: int = 50_000,
    folder: Path | None = None,
    workers: int | None = None,
    naive: bool = True,
) -> list[RunBench]:
    """Decode-only ceiling, the naive loop and `pipeline classify` on the same folder of PNGs."""
    folder = make_digit_folder(folder or Path(tempfile.gettempdir()) / f"pipeline-bench-{count}", count)
    warm_cache(folder)
    n_workers = workers or os.cpu_count() or 1
    py = sys.executable
    results = [
        _measure("decode only (ceiling)", [py, "-c", _DECODE_ONLY, str(folder), str(n_workers)], count)
    ]
    if naive:
        results.append(_measure("naive loop", [py, "-c", _NAIVE, str(folder), str(model)], count))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.csv"
        cmd = [py, "-m", "pipeline", "classify", str(folder), "--out", str(out), "--model", str(model)]
        if workers:
            cmd += ["--workers", str(workers)]
        results.append(_measure("pipeline classify", cmd, count))
    return results


_RAY_STARTUP = """
import time
t = time.perf_counter()
import ray, ray.data
ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
ray.data.range(8).map_batches(lambda b: b).take_all()
ray.shutdown()
print("SECONDS", time.perf_counter() - t)
"""


def bench_engines(model: Path, count: int = 20_000, folder: Path | None = None) -> list[RunBench]:
    """The local engine and the Ray engine on the same folder, plus Ray's bare start-up cost
    (start a local Ray, run a one-block dataset, shut down)."""
    from pipeline.classify import ray

    ray.require_ray()
    folder = make_digit_folder(folder or Path(tempfile.gettempdir()) / f"pipeline-bench-{count}", count)
    warm_cache(folder)
    py = sys.executable
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("local", "ray"):
            out = Path(tmp) / f"{engine}.csv"
            cmd = [py, "-m", "pipeline", "classify", str(folder), "--out", str(out), "--model", str(model)]
            results.append(_measure(f"classify --engine {engine}", [*cmd, "--engine", engine], count))
        if (Path(tmp) / "local.csv").read_bytes() != (Path(tmp) / "ray.csv").read_bytes():
            raise PipelineError("the two engines wrote different CSV files")
    results.append(_measure("ray start-up + shutdown", [py, "-c", _RAY_STARTUP], 0))
    return results


@dataclass(frozen=True)
class ScanBench:
    style: str
    images: int
    accuracy: float  # through `pipeline classify`, as shipped
    clean_accuracy: float  # the same test digits as the 28x28 MNIST images
    without_lines_accuracy: float  # the same files with form-line erasure switched off
    errors: int
    per_second: float


def bench_scans(
    model: Path, count: int = 2000, start: int = 0, seed: int = defaults.SEED, style: str = "scan"
) -> ScanBench:
    """Accuracy on MNIST test digits rendered as scans or form fields (`pipeline.samples`).

    The files go through `pipeline classify` as a user's would; the same files are then
    preprocessed again without form-line erasure, so the figure shows what that step is worth on
    forms and that it costs nothing on plain scans.
    """
    from pipeline.classify import ENCODING, ERRORS, classify
    from pipeline.samples import write_samples

    predictor = runtime.load(model)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "scans"
        write_samples(folder, count, style, start=start, seed=seed)
        summary = classify(folder, Path(tmp) / "scans.csv", model=model)
        with open(folder / "labels.csv", newline="") as f:
            labels = {r["file"]: r["label"] for r in csv.DictReader(f)}
        with open(Path(tmp) / "scans.csv", encoding=ENCODING, errors=ERRORS, newline="") as f:
            rows = list(csv.DictReader(f))
        names = sorted(labels)
        digits = np.stack([_digit_or_blank(folder / name) for name in names])
    without = predictor.predict(preprocess.scale(digits)).argmax(axis=1)
    correct = sum(r["prediction"] == labels[r["path"]] for r in rows)
    images, y = data.load(data.Split.TEST)
    clean = predictor.predict(preprocess.scale(images[start : start + count])).argmax(axis=1)
    return ScanBench(
        style, count, correct / count, float(np.mean(clean == y[start : start + count])),
        float(np.mean(without == np.array([int(labels[n]) for n in names]))), summary.errors,
        summary.images_per_second,
    )  # fmt: skip


def _digit_or_blank(path: Path) -> np.ndarray:
    """One file preprocessed without form-line erasure; a blank field counts as a wrong answer."""
    from pipeline.errors import ImageError

    try:
        return preprocess.load_digit(path, erase_lines=False)
    except ImageError:
        return np.zeros((defaults.FIELD_SIZE, defaults.FIELD_SIZE), dtype=np.uint8)


@dataclass(frozen=True)
class AugmentBench:
    workers: int
    images: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.images / self.seconds


def bench_augment(
    count: int = 60_000, batch_size: int = defaults.BATCH_SIZE, workers: list[int] | None = None
) -> list[AugmentBench]:
    """How many augmented training images a second the host supplies, per number of threads.

    One epoch of `train.augmented_batches` over `count` training digits, its batches made by a
    thread pool as Keras' ordered enqueuer makes them. A GPU step that takes less time than a
    batch takes here waits on the host, so compare the figure with the GPU's images/s.
    """
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.train import augmented_batches

    images, labels = data.load(data.Split.TRAIN)
    x = preprocess.scale(images[:count])
    y = np.eye(10, dtype=np.float32)[labels[:count].astype(np.int64)]
    cores = os.cpu_count() or 1
    counts = workers or sorted({1, defaults.AUGMENT_WORKERS, *(2**i for i in range(1, 5) if 2**i <= cores)})
    results = []
    for n in counts:
        batches = augmented_batches(x, y, batch_size, defaults.SEED, first_epoch=0, workers=n)
        batches[0]  # build the cached smoothing matrices outside the timing
        start = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            made = sum(len(b[1]) for b in pool.map(batches.__getitem__, range(len(batches))))
        results.append(AugmentBench(n, made, time.perf_counter() - start))
    return results
