"""Which score, flagging 1% of the MNIST test set, catches the most of its errors? For issue #16.

The review flags rows by the calibrated confidence. This script ranks the 10,000 test images by
other scores the default ensemble can give without slowing classify down, and counts the errors
among the 100 ranked most doubtful: the confidence itself, the margin to the second digit, the
entropy, the members' disagreement (mutual information, the least confident member, the spread
of the members' probability of the answer, the members' votes), and the model's features (the
Mahalanobis distance to the answer's class mean, the Gaussian posterior of the answer, the margin
between the answer's distance and the nearest other class's), alone and added to the confidence.

    PIPELINE_DATA_DIR=../shared/datasets .venv/bin/python scripts/review_signals.py

The test set is read to count, never to fit: the class means and covariance are the release's
review model (fitted on training images). Needs the `train` extra (Keras, for the members).
"""

from __future__ import annotations

import numpy as np

from pipeline import data, runtime
from pipeline.classify import review_for
from pipeline.preprocess import model_input
from pipeline.review import ReviewModel

MODEL, FLAGGED = "exported/bncnn-x4.keras", 100


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, 1))).sum(axis=-1)


def _feature_scores(rm: ReviewModel, features: np.ndarray, answer: np.ndarray) -> dict[str, np.ndarray]:
    """Scores from the features: the larger, the more doubtful."""
    n = len(features)
    distances = np.stack([rm.feature_distances(features, np.full(n, c)) for c in range(10)], axis=1)
    own = distances[np.arange(n), answer]
    others = distances.copy()
    others[np.arange(n), answer] = np.inf
    log_post = -0.5 * distances
    log_post -= log_post.max(axis=1, keepdims=True)
    posterior = np.exp(log_post) / np.exp(log_post).sum(axis=1, keepdims=True)
    return {
        "feature distance to the answer's class": own,
        "feature distance, answer minus nearest other": own - others.min(axis=1),
        "feature Gaussian posterior of the answer": -posterior[np.arange(n), answer],
    }


def main() -> None:
    import keras

    images, labels = data.load("test")
    x = model_input(images, deskew=False)
    predictor = runtime.load(MODEL)
    probs, features = predictor.run(x)
    assert features is not None
    ensemble = keras.saving.load_model(MODEL, compile=False)
    members = np.stack([layer.predict(x, batch_size=500, verbose=0) for layer in ensemble.layers[1:5]])
    answer = probs.argmax(axis=1)
    wrong = answer != labels
    confidence = probs.max(axis=1)
    ordered = np.sort(probs, axis=1)
    of_answer = np.take_along_axis(members, answer[None, :, None], axis=2)[..., 0]
    scores = {
        "confidence": -confidence,
        "margin to the second digit": -(ordered[:, -1] - ordered[:, -2]),
        "entropy": _entropy(probs),
        "members' mutual information": _entropy(probs) - _entropy(members).mean(axis=0),
        "least confident member": -of_answer.min(axis=0),
        "spread of the members' probability": of_answer.std(axis=0),
        "members' votes for the answer": -(members.argmax(axis=2) == answer).sum(axis=0) - confidence,
    }
    scores |= _feature_scores(review_for(predictor.path), features, answer)
    rank = np.argsort(np.argsort(-confidence))  # 0 = most confident
    for name in [k for k in scores if k.startswith("feature")]:
        other = np.argsort(np.argsort(scores[name]))  # 0 = least doubtful
        scores[f"confidence rank + {name} rank"] = rank + other
    print(f"{int(wrong.sum())} errors on the {len(labels)} test images; errors among the {FLAGGED} flagged:")
    for name, score in scores.items():
        flagged = np.argsort(-score, kind="stable")[:FLAGGED]
        print(f"  {int(wrong[flagged].sum()):3d}  {name}")


if __name__ == "__main__":
    main()
