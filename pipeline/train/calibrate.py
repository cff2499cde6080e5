"""Temperature scaling, fitted on images the model never trained on and folded into its weights.

Why a temperature, and why in the weights:

- Label smoothing (bncnn's recipe) caps a member's confidence near 0.9 while 99.7% of its answers
  are right, and the seed's sigmoid says about 1.0 for everything: the confidence column ranks
  answers but is not a probability. One scalar T dividing the logits (Guo et al. 2017) keeps
  every answer (argmax unchanged for a single network) and fixes most of the gap on data sets with
  few errors; more flexible maps (histogram binning, isotonic) need more held-out errors than the
  few dozen a 99.6% model makes on 6,000 images.
- Dividing the output layer's kernel and bias by T is exactly logits / T, with no new operator:
  every artifact exported from the calibrated `.keras` (ONNX and TFLite, float and int8, whose
  heads stay in float) returns calibrated probabilities, and classify needs no extra step. An
  ensemble's members share one T, fitted on the ensemble's averaged output.
- The held-out images are the ones every run (every member) held out for validation, from the
  runs' own configs (`TrainConfig.held_out`): members trained with one `--split-seed` share them.
  The fit reads nothing else; the test set is only evaluated after, for the report.
- T minimises the negative log-likelihood of the held-out labels, by a golden-section search on
  log T. Only softmax outputs: the seed's sigmoid scores are not a distribution (several are
  near 1 at once), so one divisor of their logits cannot make the top one a probability.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import calibration, data, defaults, preprocess, quiet, report, runtime
from pipeline.errors import CalibrationError
from pipeline.files import sidecar_json, write_json
from pipeline.train.config import TrainConfig
from pipeline.train.rundir import save_model_file


@dataclass
class CalibrationResult:
    model: Path  # the calibrated .keras
    temperature: float
    held_out: int  # images the fit used
    before: dict[str, float] = field(default_factory=dict)  # held-out and test ECE, NLL, accuracy
    after: dict[str, float] = field(default_factory=dict)
    reliability_png: Path | None = None


def _config(path: Path) -> TrainConfig:
    saved = sidecar_json(path, "config.json")
    if not saved:
        raise CalibrationError(
            f"{path}: no config.json beside it; calibration needs the run's config to know which "
            "images it held out"
        )
    known = set(TrainConfig.__dataclass_fields__)
    return TrainConfig(**{k: v for k, v in saved.items() if k in known})


def held_out_indices(model_path: Path, n_train: int) -> tuple[np.ndarray, str]:
    """Indices of the training images held out by the model's run, or by every member of an
    ensemble; and a description of where they come from, for the manifest."""
    saved = sidecar_json(model_path, "config.json")
    if saved.get("kind") == "ensemble":
        sets, seeds = [], set()
        for member in saved.get("members", []):
            member_path = Path(member)
            if not member_path.is_file():
                raise CalibrationError(
                    f"{model_path}: member {member} is not here; calibration needs each member's "
                    "config.json to know which images it held out"
                )
            config = _config(member_path)
            sets.append(config.held_out(n_train))
            seeds.add(config.seed if config.split_seed is None else config.split_seed)
        common = sets[0]
        for s in sets[1:]:
            common = np.intersect1d(common, s)
        where = f"the {len(common)} training images every member held out (split seeds {sorted(seeds)})"
    else:
        config = _config(model_path)
        common = config.held_out(n_train)
        where = f"the {len(common)} training images the run held out for validation (seed {config.seed})"
    if len(common) < defaults.TEMPERATURE_MIN_IMAGES:
        raise CalibrationError(
            f"{model_path}: only {len(common)} training images were held out from it (at least "
            f"{defaults.TEMPERATURE_MIN_IMAGES} needed); train it, or its members with one "
            "--split-seed, with --validation-split"
        )
    return common, where


def output_layers(model: Any) -> list[Any]:
    """The Dense layers that make the probabilities: the model's own, or each member's."""
    found = []
    for layer in [model, *[la for la in model.layers if hasattr(la, "layers")]]:
        try:
            dense = layer.get_layer(defaults.OUTPUT_NAME)
        except ValueError:
            continue
        if hasattr(dense, "kernel"):
            activation = dense.get_config().get("activation")
            if activation != "softmax":
                raise CalibrationError(
                    f"{model.name}: its output layer is {activation}, not softmax: a temperature "
                    "calibrates a distribution (the seed's sigmoid scores are not one)"
                )
            found.append(dense)
    if not found:
        raise CalibrationError(
            f"{model.name}: no softmax Dense layer named {defaults.OUTPUT_NAME!r} to calibrate"
        )
    return found


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Negative log-likelihood of the labels: the proper score the fit minimises."""
    p = np.clip(probs.astype(np.float64), 1e-12, 1.0)
    return float(-np.log(p[np.arange(len(p)), labels]).mean())


class Head:
    """The model's last step in numpy: each output layer's input features, computed once, then
    softmax((features @ kernel + bias) / T), averaged over the layers (an ensemble's members).
    The fit tries dozens of temperatures without running the network again."""

    def __init__(self, model: Any, denses: list[Any], x: np.ndarray) -> None:
        keras = quiet.load("keras")
        self.logits = []
        for dense in denses:
            owner = (
                model
                if any(la is dense for la in model.layers)
                else next(
                    la for la in model.layers if hasattr(la, "layers") and any(d is dense for d in la.layers)
                )
            )
            features = keras.Model(owner.input, dense.input)
            f = np.concatenate(
                [np.asarray(features(x[i : i + 512], training=False)) for i in range(0, len(x), 512)]
            )
            kernel, bias = dense.get_weights()
            self.logits.append(f.astype(np.float64) @ kernel.astype(np.float64) + bias)

    def probs(self, temperature: float) -> np.ndarray:
        outs = []
        for z in self.logits:
            z = z / temperature
            e = np.exp(z - z.max(axis=1, keepdims=True))
            outs.append(e / e.sum(axis=1, keepdims=True))
        return np.mean(outs, axis=0)


def fit_temperature(head: Head, y: np.ndarray) -> float:
    """Golden-section search of log T over [1/20, 20] for the least NLL: smooth and, in
    practice, unimodal in log T."""
    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2

    def score(log_t: float) -> float:
        return _nll(head.probs(math.exp(log_t)), y)

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    while hi - lo > defaults.TEMPERATURE_TOLERANCE:
        if score(a) < score(b):
            hi, b = b, a
            a = hi - ratio * (hi - lo)
        else:
            lo, a = a, b
            b = lo + ratio * (hi - lo)
    return math.exp((lo + hi) / 2)


def _summary(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {
        "ece": round(calibration.ece(probs, labels), 5),
        "nll": round(_nll(probs, labels), 5),
        "accuracy": round(float((probs.argmax(axis=1) == labels).mean()), 5),
        "mean_confidence": round(float(probs.max(axis=1).mean()), 5),
    }


def _load_softmax(path: Path) -> tuple[runtime.Predictor, Any, list[Any]]:
    predictor = runtime.load(path)
    model = predictor.model  # type: ignore[attr-defined]
    return predictor, model, output_layers(model)


def calibrate(
    model_path: Path, out: Path, data_dir: Path | None = None, fit_on: Path | None = None
) -> CalibrationResult:
    """Fit T on the held-out images, write the calibrated model as the run folder `out`
    (model.keras, config.json, metrics.json with a `calibration` record, reliability.png).

    `fit_on` fits T on another model's held-out images and folds it into this one: for a model
    trained on every training image (the release ensemble), a stand-in of the same recipe whose
    members held images out (docs/release.md says which, and why the temperature carries over)."""
    for path in (model_path, *([fit_on] if fit_on is not None else [])):
        if path.suffix != ".keras":
            raise CalibrationError(
                f"{path}: calibrate takes a Keras model (.keras); export after calibrating"
            )
    if (out / "model.keras").exists():
        raise CalibrationError(f"{out} already holds a model; choose another --out")
    try:  # before the work: an --out that cannot be written fails at once
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CalibrationError(f"{out}: cannot create it ({exc.strerror or exc})") from None
    report.require_matplotlib()
    source = fit_on or model_path
    source_predictor, source_model, source_denses = _load_softmax(source)
    saved = sidecar_json(model_path, "config.json")
    dataset, deskew = saved.get("dataset", defaults.DATASET), bool(saved.get("deskew", False))
    x_train, y_train = data.load(data.Split.TRAIN, dataset, data_dir)
    index, where = held_out_indices(source, len(x_train))
    if fit_on is not None:
        where = f"{where}, of the stand-in {fit_on}"
    x = preprocess.model_input(x_train[index], deskew)
    y = y_train[index].astype(np.int64)
    head = Head(source_model, source_denses, x)
    temperature = fit_temperature(head, y)
    before_probs, after_probs = head.probs(1.0), head.probs(temperature)
    if fit_on is None:
        predictor, model, denses = source_predictor, source_model, source_denses
    else:
        predictor, model, denses = _load_softmax(model_path)
    # The test set, once T is fixed: for the record (before and after), and to check the fold.
    x_test, y_test = data.load(data.Split.TEST, dataset, data_dir)
    test_x = preprocess.model_input(x_test, deskew)
    test_head = Head(model, denses, test_x)
    before_test, after_test = test_head.probs(1.0), test_head.probs(temperature)
    for dense in denses:  # fold T into the weights: logits / T, no new operator
        dense.set_weights([w / np.float32(temperature) for w in dense.get_weights()])
    check = slice(0, defaults.TEMPERATURE_FOLD_CHECK)
    folded, expected = predictor.predict(test_x[check]), after_test[check]
    if not np.allclose(folded, expected, atol=defaults.TEMPERATURE_FOLD_ATOL):
        raise CalibrationError(
            f"{model_path}: its output is not the average of its output layers' softmax (max difference "
            f"{np.abs(folded - expected).max():.2g}); calibration cannot fold T into it"
        )

    summaries = {
        "held_out_before": _summary(before_probs, y),
        "held_out_after": _summary(after_probs, y),
        "test_before": _summary(before_test, y_test),
        "test_after": _summary(after_test, y_test),
    }
    record: dict[str, Any] = {
        "method": "temperature (output layers' kernel and bias divided by T)",
        "temperature": round(temperature, 6),
        "fitted_on": where,
        "objective": "negative log-likelihood of the held-out labels",
        "source": str(model_path),
        "fit_on": str(fit_on) if fit_on is not None else None,
        **summaries,
    }
    metrics = sidecar_json(model_path, "metrics.json")
    metrics.update(
        test_accuracy=float((after_test.argmax(axis=1) == y_test).mean()),
        test_loss=summaries["test_after"]["nll"],
        calibration=record,
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    write_json(out / "config.json", saved)
    for name in ("curves.png", "history.json"):
        sidecar = model_path.with_name(f"{model_path.stem}.{name}")
        if not sidecar.is_file():
            sidecar = model_path.parent / name
        if sidecar.is_file():
            shutil.copyfile(sidecar, out / name)
    before_ece, after_ece = summaries["held_out_before"]["ece"], summaries["held_out_after"]["ece"]
    png = report.plot_reliability(
        {
            f"T=1 (ECE {before_ece:.4f})": calibration.reliability(before_probs, y),
            f"T={temperature:.3f} (ECE {after_ece:.4f})": calibration.reliability(after_probs, y),
        },
        out / "reliability.png",
        title=f"{metrics.get('model', model.name)}: {len(y):,} held-out images"
        + (f" of the stand-in {fit_on.parent.name}" if fit_on is not None else ""),
    )
    # Last: a folder with model.keras is a finished calibration (a second run refuses it).
    save_model_file(model, out / "model.keras", include_optimizer=False)
    return CalibrationResult(
        out / "model.keras", temperature, len(y), summaries["test_before"], summaries["test_after"], png
    )
