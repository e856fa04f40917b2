"""Classification scores that tell learning from calibration.

A model that only shifts its label-word scores (a per-class bias) can gain a lot of accuracy on
a task it answers lopsidedly: SmolLM2 says " great" to 96% of movie reviews. The *bias-only
line* is the best score such a shift reaches on the same predictions; only a result above the
zero-shot model's line shows that the model learned something beyond calibration.
"""

from __future__ import annotations

import numpy as np


def balanced_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean recall over the classes that occur in ``labels`` (chance is 1/classes)."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    recalls = [float(np.mean(pred[labels == c] == c)) for c in range(num_classes) if np.any(labels == c)]
    return float(np.mean(recalls)) if recalls else float("nan")


def _scores_many(pred: np.ndarray, labels: np.ndarray, num_classes: int, balanced: bool) -> np.ndarray:
    """The metric of each row of ``pred`` (candidates x examples) at once."""
    hit = pred == labels[None, :]
    if not balanced:
        return hit.mean(-1)
    present = [c for c in range(num_classes) if np.any(labels == c)]
    return np.mean([hit[:, labels == c].mean(-1) for c in present], axis=0)


def _best_shift(
    scores: np.ndarray,
    other_score: np.ndarray,
    other_class: np.ndarray,
    labels: np.ndarray,
    c: int,
    num_classes: int,
    balanced: bool,
) -> tuple[float, float]:
    """Exact 1-D search: the shift b of class c's scores that maximises the metric.

    Example i is predicted c exactly when b > other_score[i] - scores[i], and otherwise as the
    best of the other classes. The metric is piecewise constant in b with those breakpoints, so
    trying one b between each pair of consecutive breakpoints (and beyond both ends) is exhaustive.
    """
    t = np.unique(other_score - scores)
    cands = np.concatenate(([t[0] - 1.0], (t[:-1] + t[1:]) / 2, [t[-1] + 1.0]))
    pred = np.where(scores[None, :] + cands[:, None] > other_score[None, :], c, other_class[None, :])
    vals = _scores_many(pred, labels, num_classes, balanced)
    i = int(np.argmax(vals))
    return float(cands[i]), float(vals[i])


def bias_only_line(logits: np.ndarray, labels: np.ndarray, *, balanced: bool = True, passes: int = 10) -> float:
    """Best accuracy (balanced by default) of argmax(logits + b) over per-class shifts b.

    Exact for two classes. For more, coordinate ascent from b = 0 with an exact search per
    class (a lower bound on the true optimum, in practice within a fraction of a point).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    n, k = logits.shape
    if n == 0:
        return float("nan")
    b = np.zeros(k)
    best = float(_scores_many(logits.argmax(-1)[None, :], labels, k, balanced)[0])
    for _ in range(passes):
        improved = False
        for c in range(k):
            shifted = logits + b
            rest = np.delete(shifted, c, axis=1)
            idx = np.delete(np.arange(k), c)
            bc, s = _best_shift(logits[:, c], rest.max(-1), idx[rest.argmax(-1)], labels, c, k, balanced)
            if s > best + 1e-12:
                b[c], best, improved = bc, s, True
        if not improved or k == 2:
            break
    return float(best)


def classification_scores(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, balanced accuracy, the share of each predicted class, and both bias-only lines."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    k = logits.shape[1]
    pred = logits.argmax(-1)
    return {
        "accuracy": float(np.mean(pred == labels)),
        "balanced_accuracy": balanced_accuracy(pred, labels, k),
        "predicted_share": [float(np.mean(pred == c)) for c in range(k)],
        "bias_line_accuracy": bias_only_line(logits, labels, balanced=False),
        "bias_line_balanced_accuracy": bias_only_line(logits, labels, balanced=True),
    }
