"""A lean JAX training loop for time to accuracy: `pipeline train --model bncnn --fast`.

Keras on JAX spent, on the H100, 7-9 s before its fit loop, about 30 s compiling and 5.4 ms
dispatching each of an epoch's 422 steps (README, "Time to accuracy on the GPU"), so no schedule
reached 99.0% in under 41 s from a cold start. This loop removes those costs rather than tuning
around them:

- no Keras until training has stopped: JAX alone is imported, the weights are plain arrays;
- the training images live on the device, and a whole epoch is one compiled `lax.scan` over its
  batches, so the host dispatches once per epoch instead of once per step;
- the host reads one number per epoch (validation accuracy), which decides the stop;
- augmentation (the recipe's, from `augment.Augmentation`, elastic distortion included) runs on
  the device inside the compiled step, with the same arithmetic as the host's (`augment.warp`),
  so a fast GPU is never left waiting for a 2-core host to distort images.

It trains `bncnn` (or the narrower `bncnn-s`) with the same layers, names, initialisers, BatchNorm
momentum, dropout, label smoothing and AdamW warm-up + cosine schedule as the Keras path
(`models.build_bncnn`, `train._optimizer`), and then copies its weights into that Keras model, so
the run folder (model.keras, metrics, curves) is the same as any run's and export and verify take
it unchanged.
What it leaves out: per-epoch checkpoints and --resume (a run takes seconds to minutes on a GPU);
a SIGTERM (a time limit) ends it after the epoch in progress instead, and it is saved as it is.
Validation still chooses the epoch that is kept.

With a teacher (`train --teacher`, an ensemble of bncnn members or one bncnn) the student learns
from the teacher's probabilities on the very images it sees, each distorted batch included: the
teacher runs inside the compiled step, in inference mode, so distilling costs the teacher's
forward passes and nothing on the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline import defaults
from pipeline.errors import TrainError
from pipeline.train import models
from pipeline.train.augment import Augmentation, warp


def layout(model: str = "bncnn") -> tuple[tuple[Any, ...], ...]:
    """The model, layer by layer, as models.build_bncnn builds it: ("conv", name, kernel, strides,
    padding, filters), ("drop", rate), ("flatten",), ("dense", name, units). Every conv is
    followed by BatchNormalization (named <name>_bn) and ReLU. tests/test_fastfit.py checks it
    against Keras. The widths differ between models; names, kernels and strides do not."""
    first, second, head = models.BNCNN_WIDTHS[model]
    return (
        ("conv", "s1c1", 3, 1, "SAME", first),
        ("conv", "s1c2", 3, 1, "SAME", first),
        ("conv", "s1down", 5, 2, "SAME", first),
        ("drop", 0.4),
        ("conv", "s2c1", 3, 1, "SAME", second),
        ("conv", "s2c2", 3, 1, "SAME", second),
        ("conv", "s2down", 5, 2, "SAME", second),
        ("drop", 0.4),
        ("conv", "head", 4, 1, "VALID", head),
        ("flatten",),
        ("drop", 0.4),
        ("dense", "probabilities", 10),
    )


# What forward() walks: the layers' kinds, names, kernels and strides (the widths come from the
# parameters themselves, so one walk serves every width).
BNCNN = layout("bncnn")
BN_MOMENTUM = 0.9  # models._conv_bn
BN_EPSILON = 1e-3  # Keras' BatchNormalization default
ADAM_BETAS = (0.9, 0.999)  # Keras' Adam defaults
ADAM_EPSILON = 1e-7


@dataclass
class FastResult:
    """What the loop hands back to train.train: Keras-ordered weights per layer and the history."""

    weights: dict[str, list[np.ndarray]]
    history: dict[str, list[float]]
    epochs_done: int
    best_epoch: int
    best_score: float
    epoch_end_times: list[float]
    target_reached: dict[str, Any] | None
    # seconds from process start when the data reached the device, and seconds spent compiling
    timeline: dict[str, float]


def check(model: str, precision: str) -> None:
    """Refuse what the fast loop does not do, before any data is read."""
    if model not in models.BNCNN_WIDTHS:
        raise TrainError(f"--fast trains {' and '.join(models.BNCNN_WIDTHS)} only (got --model {model})")
    if precision == "mixed_float16":
        raise TrainError("--fast computes in float32 or bfloat16; use --precision mixed_bfloat16")


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Full batches in an epoch (a scan needs equal steps); at least one, else a TrainError."""
    if images < batch_size:
        raise TrainError(f"--fast needs at least one full batch ({batch_size} training images)")
    return images // batch_size


def init_params(
    seed: int, in_channels: int = 1, side: int = 28, model: str = "bncnn"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Glorot-uniform kernels, zero biases, BatchNorm at identity: Keras' initialisers.

    Drawn with numpy (one JAX random call per shape would compile one small program each: 3 s
    on a CPU). Returns (trainable parameters, BatchNorm moving statistics), both as
    {layer: {name: float32 array}}.
    """
    rng = np.random.default_rng(seed)
    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    channels, size = in_channels, side

    def glorot(shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
        limit = math.sqrt(6 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, shape).astype(np.float32)

    for layer in layout(model):
        if layer[0] == "conv":
            _, name, k, s, pad, filters = layer
            params[name] = {"kernel": glorot((k, k, channels, filters), k * k * channels, k * k * filters)}
            params[f"{name}_bn"] = {
                "gamma": np.ones(filters, np.float32),
                "beta": np.zeros(filters, np.float32),
            }
            stats[f"{name}_bn"] = {"mean": np.zeros(filters, np.float32), "var": np.ones(filters, np.float32)}
            size = -(-size // s) if pad == "SAME" else size - k + 1
            channels = filters
        elif layer[0] == "flatten":
            channels, size = channels * size * size, 1
        elif layer[0] == "dense":
            _, name, units = layer
            params[name] = {
                "kernel": glorot((channels, units), channels, units),
                "bias": np.zeros(units, np.float32),
            }
    return params, stats


def teacher_weights(model: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(parameters, BatchNorm statistics) of every bncnn in a Keras model, as `init_params` makes
    them: the model itself if it is one, else each nested sub-model that is (an ensemble's
    members). The inverse of `keras_weights`. A model holding no bncnn is a TrainError."""
    found = []
    wanted = [layer[1] for layer in BNCNN if layer[0] in ("conv", "dense")]
    for net in [model, *(layer for layer in model.layers if hasattr(layer, "layers"))]:
        names = {layer.name for layer in net.layers}
        if not all(name in names for name in wanted):
            continue
        params: dict[str, Any] = {}
        stats: dict[str, Any] = {}
        for name in wanted:
            weights = [np.asarray(w, np.float32) for w in net.get_layer(name).get_weights()]
            if f"{name}_bn" in names:
                params[name] = {"kernel": weights[0]}
                gamma, beta, mean, var = (
                    np.asarray(w, np.float32) for w in net.get_layer(f"{name}_bn").get_weights()
                )
                params[f"{name}_bn"] = {"gamma": gamma, "beta": beta}
                stats[f"{name}_bn"] = {"mean": mean, "var": var}
            else:
                params[name] = {"kernel": weights[0], "bias": weights[1]}
        found.append((params, stats))
    if not found:
        raise TrainError(f"{model.name}: no bncnn in it to teach with (a bncnn, or an ensemble of them)")
    for params, _ in found:
        if not _chained(params):
            raise TrainError(f"{model.name}: a member's layers are not bncnn's shapes")
    return found


def _chained(params: dict[str, Any]) -> bool:
    """Whether the kernels have bncnn's sizes and each layer takes what the one before gives (any
    width: a bncnn-s teaches as well as a bncnn)."""
    channels, size = 1, 28
    for layer in BNCNN:
        if layer[0] == "conv":
            _, name, k, stride, pad, _ = layer
            kernel = params[name]["kernel"]
            if kernel.ndim != 4 or kernel.shape[:3] != (k, k, channels):
                return False
            channels = kernel.shape[3]
            size = -(-size // stride) if pad == "SAME" else size - k + 1
        elif layer[0] == "flatten":
            channels, size = channels * size * size, 1
        elif layer[0] == "dense" and params[layer[1]]["kernel"].shape != (channels, layer[2]):
            return False
    return True


def teacher_probs(teacher: Any, x: Any, dtype: Any) -> Any:
    """The teacher's probabilities: the mean of its members' softmax outputs, as the ensemble
    model computes them (inference mode: moving BatchNorm statistics, no dropout)."""
    import jax

    probs = [jax.nn.softmax(forward(p, s, x, False, None, dtype)[0]) for p, s in teacher]
    return sum(probs[1:], probs[0]) / len(probs)


def distillation_loss(logits: Any, probs: Any, temperature: float) -> Any:
    """T^2 * KL(teacher || student), both softened at `temperature` (Hinton et al. 2015; the T^2
    keeps its gradients the size of a hard-label loss), averaged over the batch. The teacher's
    softened distribution is softmax(log(probs) / T): the probabilities an ensemble averaged,
    raised to 1/T and renormalised."""
    import jax
    import jax.numpy as jnp

    soft = jax.nn.softmax(jnp.log(jnp.maximum(probs, 1e-12)) / temperature)
    log_student = jax.nn.log_softmax(logits / temperature)
    kl = (soft * (jnp.log(jnp.maximum(soft, 1e-12)) - log_student)).sum(-1)
    return temperature**2 * kl.mean()


def forward(params: Any, stats: Any, x: Any, train: bool, key: Any, dtype: Any) -> tuple[Any, Any]:
    """Logits (float32) and, when training, the updated BatchNorm statistics.

    Convolutions run in `dtype` (bfloat16 on a GPU); BatchNorm, the output layer and the loss in
    float32, as Keras' mixed policy does. Training BatchNorm normalises by the batch's biased
    moments and moves the statistics by momentum 0.9, like Keras.
    """
    import jax
    import jax.numpy as jnp

    new_stats: dict[str, Any] = {}
    h = x.astype(dtype)
    for layer in BNCNN:
        kind = layer[0]
        if kind == "conv":
            _, name, _, s, pad, _ = layer
            h = jax.lax.conv_general_dilated(
                h,
                params[name]["kernel"].astype(dtype),
                (s, s),
                pad,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            ).astype(jnp.float32)
            bn = f"{name}_bn"
            if train:
                mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
                old = stats[bn]
                new_stats[bn] = {
                    "mean": old["mean"] * BN_MOMENTUM + mean * (1 - BN_MOMENTUM),
                    "var": old["var"] * BN_MOMENTUM + var * (1 - BN_MOMENTUM),
                }
            else:
                mean, var = stats[bn]["mean"], stats[bn]["var"]
            h = (h - mean) * jax.lax.rsqrt(var + BN_EPSILON) * params[bn]["gamma"] + params[bn]["beta"]
            h = jax.nn.relu(h).astype(dtype)
        elif kind == "drop" and train:
            key, sub = jax.random.split(key)
            keep = jax.random.bernoulli(sub, 1 - layer[1], h.shape)
            h = jnp.where(keep, h / (1 - layer[1]), 0).astype(dtype)
        elif kind == "flatten":
            h = h.reshape(h.shape[0], -1)
        elif kind == "dense":
            p = params[layer[1]]
            h = h.astype(jnp.float32) @ p["kernel"] + p["bias"]
    return h, (new_stats if train else stats)


def learning_rate(step: Any, peak: float, steps_per_epoch: int, epochs: int) -> Any:
    """train._optimizer's schedule: one epoch of linear warm-up from peak/10, then cosine decay to
    1% of peak over the remaining steps (keras.optimizers.schedules.CosineDecay's formula)."""
    import jax.numpy as jnp

    total = steps_per_epoch * epochs
    warmup = min(steps_per_epoch, total // 2)
    decay = max(1, total - warmup)
    initial = peak / 10
    warm = initial + (peak - initial) * step / max(1, warmup)
    done = jnp.minimum(step - warmup, decay) / decay
    cosine = peak * ((1 - 0.01) * 0.5 * (1 + jnp.cos(jnp.pi * done)) + 0.01)
    return jnp.where(step < warmup, warm, cosine)


def fit(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
    epochs: int, batch_size: int, peak_lr: float, seed: int, target: float | None,
    bfloat16: bool, clock: Any, augment: bool = False, scan: bool | None = None,
    teacher: list[tuple[dict[str, Any], dict[str, Any]]] | None = None,
    temperature: float = defaults.DISTIL_TEMPERATURE, teacher_weight: float = defaults.DISTIL_WEIGHT,
    model: str = "bncnn", should_stop: Callable[[], bool] | None = None,
) -> FastResult:  # fmt: skip
    """Train `model` (bncnn or bncnn-s) on the default JAX device; stop at `target` validation
    accuracy if given.

    `clock()` returns seconds from process start (train.process_start_time), so the recorded
    times are the ones time-to-accuracy reports. The last partial batch of an epoch is dropped
    (a scan needs equal steps); each epoch reshuffles, so every image is still used. With
    `augment`, every batch is distorted on the device by `augment.Augmentation` (the host
    recipe's rotation, scale, shear, shift and elastic ranges) inside the compiled step, so the
    device never waits for the host.

    `scan` (default: on any device but a CPU) runs each epoch, its shuffle and its validation as
    one compiled program: a `lax.scan` over the training batches, then the validation images in
    batches of the training size (so its convolutions have the training's shapes, which XLA
    has already tuned). Otherwise one compiled step is called per batch. Both compute the same
    (tested); the CPU gets the loop because XLA's CPU backend runs convolutions inside a loop
    about 25 times slower than alone (measured here: 10 steps 55.5 s in a scan, 2.1 s one by one).
    Programs are compiled ahead of the first epoch, so the timeline can say what compiling cost.

    `should_stop()`, asked after each epoch, ends the run there with what it has (a time limit's
    SIGTERM: `train` asks it; the run has no checkpoints to lose otherwise).

    With `teacher` (`teacher_weights`), the loss is `teacher_weight` times `distillation_loss`
    against the teacher's probabilities on the same (distorted) batch, plus the rest times the
    labels' loss; weight 0 trains exactly as without a teacher.
    """
    import jax
    import jax.numpy as jnp

    spec = models.get(model)
    dtype = jnp.bfloat16 if bfloat16 else jnp.float32
    n = len(x_train)
    steps = steps_per_epoch(n, batch_size)
    smoothing, weight_decay = spec.label_smoothing, spec.weight_decay
    recipe = Augmentation()
    # The images go in as arguments of the compiled functions, never as closed-over constants,
    # which XLA would copy into the program (170 MB for MNIST's training images).
    data = (jnp.asarray(x_train), jnp.asarray(y_train.astype(np.int32)), jax.device_put(teacher or []))
    validated = len(x_val) > 0
    val_data = jax.device_put(validation_batches(x_val, y_val, batch_size))
    params, stats = jax.device_put(init_params(seed, model=model))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    opt = {"m": zeros, "v": zeros, "step": jnp.zeros((), jnp.int32)}
    key = jax.random.PRNGKey(seed + 1)
    timeline = {"data_on_device_seconds": round(clock(), 3)}  # includes starting the device

    def distort(key: Any, xb: Any) -> Any:
        keys = iter(jax.random.split(key, 5))  # Augmentation.draw makes at most five draws

        def uniform(low: float, high: float, shape: tuple[int, ...]) -> Any:
            return jax.random.uniform(next(keys), shape, jnp.float32, low, high)

        return warp(jnp, xb, recipe.draw(uniform, *xb.shape[:3]))

    def loss_fn(p: Any, s: Any, xb: Any, yb: Any, key: Any, tw: Any) -> tuple[Any, Any]:
        logits, new_s = forward(p, s, xb, True, key, dtype)
        target_dist = jax.nn.one_hot(yb, 10) * (1 - smoothing) + smoothing / 10
        loss = -(target_dist * jax.nn.log_softmax(logits)).sum(-1).mean()
        if tw:  # the teacher's answers on this very batch, held fixed
            probs = jax.lax.stop_gradient(teacher_probs(tw, xb, dtype))
            loss = (
                teacher_weight * distillation_loss(logits, probs, temperature) + (1 - teacher_weight) * loss
            )
        return loss, (new_s, (logits.argmax(-1) == yb).mean())

    def step_fn(carry: Any, idx: Any, xs: Any, ys: Any, tw: Any) -> tuple[Any, Any]:
        p, s, o, key = carry
        key, drop_key, warp_key = jax.random.split(key, 3)
        xb = distort(warp_key, xs[idx]) if augment else xs[idx]
        (loss, (s, acc)), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s, xb, ys[idx], drop_key, tw)
        t = o["step"] + 1
        lr = learning_rate(o["step"], peak_lr, steps, epochs)
        b1, b2 = ADAM_BETAS
        m = jax.tree_util.tree_map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, o["m"], g)
        v = jax.tree_util.tree_map(lambda v_, g_: b2 * v_ + (1 - b2) * g_ * g_, o["v"], g)
        alpha = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        # AdamW as Keras applies it: decoupled decay of every variable by lr * wd, then Adam.
        p = jax.tree_util.tree_map(
            lambda w, m_, v_: w - w * lr * weight_decay - alpha * m_ / (jnp.sqrt(v_) + ADAM_EPSILON), p, m, v
        )
        return (p, s, {"m": m, "v": v, "step": t}, key), (loss, acc)

    def shuffle(carry: Any) -> tuple[Any, Any]:
        """A new batch order from the carried key (the same on both paths)."""
        p, s, o, key = carry
        key, sub = jax.random.split(key)
        order = jax.random.permutation(sub, n)[: steps * batch_size].reshape(steps, batch_size)
        return (p, s, o, key), order

    def eval_batch(p: Any, s: Any, xb: Any, yb: Any, mask: Any) -> tuple[Any, Any]:
        """Summed cross-entropy and correct count over a padded batch's real images."""
        logits, _ = forward(p, s, xb, False, None, dtype)
        nll = -(jax.nn.one_hot(yb, 10) * jax.nn.log_softmax(logits)).sum(-1)
        return (nll * mask).sum(), ((logits.argmax(-1) == yb) * mask).sum()

    def scan_epoch(carry: Any, xs: Any, ys: Any, tw: Any, vx: Any, vy: Any, vm: Any) -> tuple[Any, ...]:
        carry, order = shuffle(carry)
        carry, (losses, accs) = jax.lax.scan(lambda c, idx: step_fn(c, idx, xs, ys, tw), carry, order)
        nll, correct = jax.lax.map(lambda b: eval_batch(carry[0], carry[1], *b), (vx, vy, vm))
        return carry, losses.mean(), accs.mean(), nll.sum(), correct.sum()

    carry = (params, stats, opt, key)
    compile_start = clock()
    if scan is None:
        scan = jax.default_backend() != "cpu"
    if scan:
        compiled = jax.jit(scan_epoch).lower(carry, *data, *val_data).compile()

        def run_epoch(carry: Any) -> tuple[Any, ...]:
            return compiled(carry, *data, *val_data)  # type: ignore[no-any-return]
    else:
        order_of = jax.jit(shuffle).lower(carry).compile()
        step = jax.jit(step_fn).lower(carry, jnp.zeros(batch_size, jnp.int32), *data).compile()
        evaluate = jax.jit(eval_batch).lower(params, stats, *(a[0] for a in val_data)).compile()

        def run_epoch(carry: Any) -> tuple[Any, ...]:
            carry, order = order_of(carry)
            losses, accs = [], []
            for i in range(steps):
                carry, (loss, acc) = step(carry, order[i], *data)
                losses.append(loss)
                accs.append(acc)
            sums = [evaluate(carry[0], carry[1], *(a[b] for a in val_data)) for b in range(len(val_data[0]))]
            nll, correct = (jnp.stack(column).sum() for column in zip(*sums, strict=True))
            return carry, jnp.stack(losses).mean(), jnp.stack(accs).mean(), nll, correct

    timeline["compile_seconds"] = round(clock() - compile_start, 3)
    history: dict[str, list[float]] = {"accuracy": [], "loss": []}
    best = (params, stats)
    best_epoch, best_score, ends, reached = 0, -1.0, [], None
    for epoch in range(1, epochs + 1):
        carry, loss, acc, nll, correct = run_epoch(carry)
        history["loss"].append(float(loss))
        history["accuracy"].append(float(acc))
        score = float(acc)
        if validated:
            score = float(correct) / len(x_val)
            history.setdefault("val_loss", []).append(float(nll) / len(x_val))
            history.setdefault("val_accuracy", []).append(score)
        ends.append(round(clock(), 3))
        if not validated or score > best_score:
            best, best_epoch, best_score = (carry[0], carry[1]), epoch, score
        if validated and target is not None and score >= target:
            reached = {"epoch": epoch, "val_accuracy": score, "seconds_from_process_start": ends[-1]}
            break
        if should_stop is not None and should_stop():
            break
    return FastResult(
        keras_weights(*best), history, len(ends), best_epoch, best_score, ends, reached, timeline
    )


def validation_batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[np.ndarray, ...]:
    """The validation images as [batches, batch_size, ...] with labels and a 0/1 mask: zero
    images pad the last batch and the mask leaves them out of every sum. At least one batch,
    so a run without validation compiles the same program."""
    count = max(1, -(-len(x) // batch_size))
    pad = count * batch_size - len(x)
    images = np.concatenate([x, np.zeros((pad, *x.shape[1:]), np.float32)]).astype(np.float32)
    labels = np.concatenate([y.astype(np.int32), np.zeros(pad, np.int32)])
    mask = (np.arange(count * batch_size) < len(x)).astype(np.float32)
    return (
        images.reshape(count, batch_size, *x.shape[1:]),
        labels.reshape(count, batch_size),
        mask.reshape(count, batch_size),
    )


def keras_weights(params: Any, stats: Any) -> dict[str, list[np.ndarray]]:
    """{Keras layer name: its get_weights() list} for the bncnn model: conv kernel; BatchNorm
    gamma, beta, moving mean, moving variance; dense kernel and bias."""
    out: dict[str, list[np.ndarray]] = {}
    for name, p in params.items():
        if name.endswith("_bn"):
            s = stats[name]
            out[name] = [np.asarray(a, np.float32) for a in (p["gamma"], p["beta"], s["mean"], s["var"])]
        else:
            out[name] = [np.asarray(p[k], np.float32) for k in ("kernel", "bias") if k in p]
    return out
