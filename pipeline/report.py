"""Figures and small reports: training curves, confusion matrix, the seed's examples figure.

Matplotlib is imported inside each function with the non-interactive Agg backend, so nothing here
needs a display and the CLI does not pay for the import unless it draws.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.files import atomic_path


def require_matplotlib() -> None:
    """One clear line, before any work, when the figures cannot be drawn: matplotlib comes with
    the [train] and [export] extras, not the core install."""
    if importlib.util.find_spec("matplotlib") is None:
        raise PipelineError("figures need matplotlib: pip install 'pipeline[train]'")


def _plt() -> Any:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    """Write a figure atomically: a reader never sees a half-written PNG."""
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        _plt().close(fig)
    return path


def plot_history(history: dict[str, list[float]], path: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, training against validation."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        if key in history:
            ax.plot(epochs, history[key], label=f"train {key}")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def plot_members(histories: dict[str, dict[str, list[float]]], path: Path, title: str = "") -> Path:
    """An ensemble's figure: each member's loss and accuracy per epoch, side by side, on its
    validation split; a member trained on every training image (no split) shows its training
    curves instead, marked as such (dashed), since that is all it has."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    validated = [h for h in histories.values() if "val_loss" in h]
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for label, history in histories.items():
            if f"val_{key}" in history:
                values, style, name = history[f"val_{key}"], "-", label
            elif key in history:
                values, style, name = history[key], "--", f"{label} (training)"
            else:
                continue
            ax.plot(np.arange(1, len(values) + 1), values, style, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(f"validation {key}" if len(validated) == len(histories) else key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def confusion(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """10x10 counts: row = actual digit, column = predicted digit."""
    matrix = np.zeros((10, 10), dtype=np.int64)
    np.add.at(matrix, (labels.astype(int), predicted.astype(int)), 1)
    return matrix


def plot_confusion(matrix: np.ndarray, path: Path, title: str = "") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    shown = matrix.astype(float).copy()
    np.fill_diagonal(shown, np.nan)  # errors only, so the colour scale shows them
    im = ax.imshow(shown, cmap="Reds")
    for i in range(10):
        for j in range(10):
            if matrix[i, j]:
                colour = "black" if i != j else "tab:blue"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title or "confusion matrix (diagonal in blue)")
    fig.colorbar(im, ax=ax, label="errors")
    return _save(fig, path)


def plot_examples(
    images: np.ndarray, labels: np.ndarray, probs: np.ndarray, path: Path, per_row: int = 5
) -> Path:
    """The seed's figure: five correct and five wrong test digits with prediction, confidence,
    second-best prediction and actual digit."""
    from pipeline.runtime import top2

    plt = _plt()
    pred, conf, second, second_conf = top2(probs)
    right = np.flatnonzero(pred == labels)[:per_row]
    wrong = np.flatnonzero(pred != labels)[:per_row]
    fig, axes = plt.subplots(2, per_row, figsize=(2.2 * per_row, 5.4))
    for row, (idxs, name) in enumerate(((right, "correct"), (wrong, "incorrect"))):
        for col in range(per_row):
            ax = axes[row, col]
            ax.axis("off")
            if col >= len(idxs):
                continue
            i = idxs[col]
            ax.imshow(images[i], cmap="gray")
            ax.set_title(
                f"{name}\npred {pred[i]} ({conf[i]:.2f})\n2nd {second[i]} ({second_conf[i]:.2f})"
                f"\nactual {labels[i]}",
                fontsize=8,
                color="tab:green" if name == "correct" else "tab:red",
            )
    return _save(fig, path)


def release_table(manifest_path: Path) -> str:
    """The README's results table, built from the manifest and parity.json beside it, so every
    figure in it traces to a recorded artifact."""
    from pipeline import manifest

    release = manifest.read(manifest_path)
    parity = manifest.read_parity(release.folder)
    by_model: dict[str, dict[str, manifest.ArtifactEntry]] = {}
    for entry in release.entries:
        if entry.micro:
            continue  # the microcontroller table below
        by_model.setdefault(entry.source.model, {})[f"{entry.format}.{entry.quantization}"] = entry

    def acc(entry: manifest.ArtifactEntry | None) -> str:
        result = parity.get(entry.path) if entry else None
        return f"{result['accuracy']:.2%}" if result and result.get("accuracy") is not None else "-"

    rows = [
        "| model | parameters | epochs (best) | device | training time | Keras | ONNX float32 | ONNX int8 "
        "| TFLite int8 | ECE Keras / int8 ONNX | size float32 / int8 (ONNX) | int8 ONNX latency @1 / @256 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, entries in by_model.items():
        source = next(iter(entries.values())).source
        training = source.training
        f32, i8 = entries.get("onnx.none"), entries.get("onnx.int8")
        t_i8 = entries.get("tflite.int8")
        lat = parity.get(i8.path) if i8 else None
        latency = f"{lat['latency_ms_batch1']:.2f} / {lat['latency_ms_batch256']:.1f} ms" if lat else "-"
        # A reference model may ship int8 only (the bundle's size budget): its float32 cell is "-".
        sizes = " / ".join(f"{e.bytes / 1024:,.0f}" if e else "-" for e in (f32, i8)) + " KiB"
        epochs = f"{_cell(training.get('epochs'))} ({_cell(training.get('best_epoch'))})"
        accuracy = "-" if source.test_accuracy is None else f"{source.test_accuracy:.2%}"
        keras_ece = next(
            (
                r["keras_ece"]
                for e in entries.values()
                if (r := parity.get(e.path)) and r.get("keras_ece") is not None
            ),
            None,
        )
        int8_ece = lat.get("ece") if lat else None
        ece = " / ".join("-" if v is None else f"{v:.4f}" for v in (keras_ece, int8_ece))
        rows.append(
            f"| {model} | {source.parameters or 0:,} | {epochs} "
            f"| {training.get('device', '-')}, {training.get('backend', '-')} "
            f"| {training.get('train_seconds', 0) / 60:.0f} min | {accuracy} "
            f"| {acc(f32)} | {acc(i8)} | {acc(t_i8)} | {ece} | {sizes} | {latency} |"
        )
    micro = [e for e in release.entries if e.micro]
    if micro:
        rows += [
            "",
            "| microcontroller model | parameters | MACs per image | flash | tensor arena | Keras "
            "| TFLite Micro (int8 in and out) | agreement with Keras | ECE (TFLite Micro) | operators |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    for entry in micro:
        m, result = entry.micro or {}, parity.get(entry.path, {})
        keras = "-" if entry.source.test_accuracy is None else f"{entry.source.test_accuracy:.2%}"
        tflm = f"{result['accuracy']:.2%}" if result.get("accuracy") is not None else "-"
        agree = f"{result['agreement']:.2%}" if result.get("agreement") is not None else "-"
        micro_ece = f"{result['ece']:.4f}" if result.get("ece") is not None else "-"
        arena = result.get("arena_bytes") or m.get("arena_bytes", 0)
        flash, ops = (
            m.get("flash_bytes", 0) / 1024,
            ", ".join(o.removeprefix("Add") for o in m.get("operators", [])),
        )
        label = f"{entry.source.model} ({entry.path})"
        rows.append(
            f"| {label} | {entry.source.parameters or 0:,} | {m.get('macs', 0):,} "
            f"| {flash:.1f} KiB | {arena / 1024:.1f} KiB | {keras} | {tflm} | {agree} | {micro_ece} | {ops} |"
        )
    return "\n".join(rows)


def _cell(value: Any) -> str:
    """An ensemble records a list (one value per member): shown as 25+35+30."""
    if isinstance(value, list):
        return "+".join(str(v) for v in value)
    return "-" if value is None else str(value)


def plot_reliability(curves: dict[str, list[Any]], path: Path, title: str = "") -> Path:
    """The reliability diagram: per confidence bin, accuracy against mean confidence (the
    diagonal is calibrated), one line per labelled curve (`calibration.Bin` lists), and below
    it how many answers each bin holds (log scale: nearly all sit in the top bins)."""
    plt = _plt()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    for label, bins in curves.items():
        full = [b for b in bins if b.count]
        top.plot([b.confidence for b in full], [b.accuracy for b in full], marker="o", label=label)
        bottom.step([b.upper for b in bins], [max(b.count, 0.5) for b in bins], where="pre", label=label)
    top.set_ylabel("accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(title, fontsize=9)
    bottom.set_yscale("log")
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("answers")
    bottom.grid(alpha=0.3)
    return _save(fig, path)
