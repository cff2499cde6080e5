"""Averaging ensembles of trained runs, saved as one ordinary Keras model.

Independently trained networks make partly independent mistakes, so the mean of their softmax
outputs is more accurate than any one of them: the usual last step to the best MNIST scores. The
ensemble is one functional model (each member a nested sub-model, an `Average` layer named
`probabilities`), so export, verify, runtime and classify treat it like any other model, and the
result is still one small file per format.

What the ensemble inherits from its members, and why it is written down:

- Each member chose its own best epoch on its own validation split. Members trained with
  different seeds hold out different images, so no split is unseen by all of them: the ensemble
  has no validation score of its own, and nothing here picks members or weights by the test set.
  Every member is used, with equal weight; the test set is evaluated once, at the end.
- Members must agree on dataset and preprocessing (deskew), and must output probabilities
  (softmax): averaging the seed CNN's independent sigmoid scores would not be a distribution.
- The training cost recorded is the sum of the members' training times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import data, defaults, preprocess, quiet, report, runtime
from pipeline.errors import ArtifactError, EnsembleError
from pipeline.files import sidecar_json, write_json
from pipeline.train.backend import library_versions
from pipeline.train.rundir import save_model_file


@dataclass(frozen=True)
class Member:
    """One trained model and the facts its run recorded."""

    path: Path
    metrics: dict[str, Any]
    config: dict[str, Any]
    history: dict[str, list[float]]


@dataclass
class EnsembleResult:
    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def _member(path: Path) -> Member:
    """A run folder (its model.keras) or a .keras file with its sidecar JSON files."""
    model = path / "model.keras" if path.is_dir() else path
    if not model.is_file() or model.suffix != ".keras":
        raise EnsembleError(f"{path}: not a run folder with model.keras, nor a .keras file")
    history = sidecar_json(model, "history.json")
    return Member(model, sidecar_json(model, "metrics.json"), sidecar_json(model, "config.json"), history)


def _agreed(members: list[Member], key: str, default: Any) -> Any:
    """The one value every member's config has for `key`; members that disagree are refused."""
    values = {repr(m.config.get(key, default)) for m in members}
    if len(values) != 1:
        raise EnsembleError(f"members disagree on {key}: {sorted(values)}; an ensemble needs one {key}")
    return members[0].config.get(key, default)


def build(members: list[Member], name: str) -> Any:
    """The averaging model: every member as a nested sub-model fed the same input."""
    keras = quiet.load("keras")
    layers = keras.layers
    size = defaults.FIELD_SIZE
    inputs = keras.Input(shape=(size, size, 1), name=defaults.INPUT_NAME)
    outputs = []
    for i, member in enumerate(members, start=1):
        try:
            loaded = runtime.load(member.path).model  # type: ignore[attr-defined]
        except ArtifactError as exc:
            raise EnsembleError(str(exc)) from exc
        try:
            activation = loaded.get_layer(defaults.OUTPUT_NAME).get_config().get("activation")
        except ValueError:
            activation = None
        if activation != "softmax":
            raise EnsembleError(
                f"{member.path}: its {defaults.OUTPUT_NAME!r} layer is not softmax ({activation}); "
                "an ensemble averages probability distributions"
            )
        # Renamed copy with the same weights: nested models need distinct names to be saved.
        sub = type(loaded).from_config({**loaded.get_config(), "name": f"member{i}"})
        sub.set_weights(loaded.get_weights())
        outputs.append(sub(inputs))
    averaged = layers.Average(name=defaults.OUTPUT_NAME)(outputs)
    return keras.Model(inputs, averaged, name=name)


def ensemble(
    paths: list[Path], out: Path, name: str | None = None, data_dir: Path | None = None
) -> EnsembleResult:
    """Average the trained models at `paths` into one model; write it as a run folder at `out`
    (model.keras, config.json, metrics.json with the test accuracy, curves.png of the members)."""
    if len(paths) < 2:
        raise EnsembleError("an ensemble needs at least two trained models")
    if len(set(p.resolve() for p in paths)) != len(paths):
        raise EnsembleError("the same model is listed twice; members must be distinct runs")
    members = [_member(p) for p in paths]
    dataset = _agreed(members, "dataset", defaults.DATASET)
    deskew = bool(_agreed(members, "deskew", False))
    base = {str(m.metrics.get("model") or m.config.get("model") or "model") for m in members}
    name = name or f"{'-'.join(sorted(base))}-x{len(members)}"
    if (out / "model.keras").exists():
        raise EnsembleError(f"{out} already holds a model; choose another --out")

    images, labels = data.load(data.Split.TEST, dataset, data_dir)  # a data problem fails first
    model = build(members, name)
    probs = runtime.KerasPredictor(out / "model.keras", model).predict(preprocess.model_input(images, deskew))
    pred = probs.argmax(axis=1)
    out.mkdir(parents=True, exist_ok=True)
    save_model_file(model, out / "model.keras", include_optimizer=False)
    facts = [_member_facts(m) for m in members]
    write_json(
        out / "config.json",
        {"model": name, "kind": "ensemble", "members": [str(m.path) for m in members],
         "dataset": dataset, "deskew": deskew},
    )  # fmt: skip
    metrics: dict[str, Any] = {
        "model": name,
        "kind": "ensemble",
        "parameters": int(model.count_params()),
        "test_accuracy": float((pred == labels).mean()),
        "test_loss": float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)))),
        "per_class_accuracy": [float((pred[labels == d] == d).mean()) for d in range(10)],
        "members": facts,
        "epochs": [f.get("epochs") for f in facts],
        "best_epoch": [f.get("best_epoch") for f in facts],
        "best_val_accuracy": None,  # members hold out different images: see the module docstring
        "test_images": len(labels),
        "train_seconds": round(sum(float(f.get("train_seconds") or 0.0) for f in facts), 2),
        "backend": "/".join(sorted({str(f.get("backend")) for f in facts})),
        "device": "/".join(sorted({str(f.get("device")) for f in facts})),
        "versions": library_versions(),
        "seed": [f.get("seed") for f in facts],
        "dataset": dataset,
        "data_sha256": members[0].metrics.get("data_sha256"),
        "deskew": deskew,
        "augment": all(bool(f.get("augment")) for f in facts),
    }
    write_json(out / "metrics.json", metrics)
    report.plot_members(
        {f"member{i} ({m.path.parent.name})": m.history for i, m in enumerate(members, start=1)},
        out / "curves.png",
        title=f"{name}: each member's curves",
    )
    return EnsembleResult(out, metrics)


def _member_facts(member: Member) -> dict[str, Any]:
    keys = ("model", "parameters", "test_accuracy", "epochs", "best_epoch", "best_val_accuracy",
            "train_seconds", "backend", "device", "seed", "augment")  # fmt: skip
    return {"path": str(member.path), **{k: member.metrics.get(k) for k in keys}}
