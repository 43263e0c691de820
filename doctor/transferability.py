"""How well a frozen backbone's features suit a task, before fine-tuning: LogME.

LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning", ICML 2021) scores features ``F`` (n x d) against labels by the log marginal
likelihood (the evidence) of a Bayesian linear model ``y = F w + noise``, with a Gaussian
prior on ``w`` of precision ``alpha`` and noise of precision ``beta``, both set by maximizing
the evidence. Per class (one-vs-rest targets), divided by n and averaged over classes; higher
is better. The paper found it ranks pretrained models by their fine-tuned accuracy well, at a
tiny fraction of fine-tuning's cost; it needs no training and no hyperparameter.

Computed from one SVD of ``F``: every step of the fixed-point iteration is then a sum over
singular values, so a score costs O(n d min(n, d)) once plus O(min(n, d)) per iteration.
"""

from __future__ import annotations

import math

import numpy as np

#: The fixed-point iteration stops when alpha / beta changes by less than this share.
TOLERANCE = 1e-3
MAX_ITERATIONS = 100


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """The LogME score of ``features`` (n x d) for integer ``labels`` (n,).

    Raises:
        ValueError: fewer than two classes, or features and labels of different lengths.
    """
    if len(features) != len(labels):
        raise ValueError(f"{len(features)} feature rows for {len(labels)} labels")
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError("LogME needs labels of at least two classes")
    f = np.asarray(features, dtype=np.float64)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s ** 2
    return float(np.mean([evidence(u, sigma, (labels == k).astype(np.float64), f.shape[1])[0]
                          for k in classes]))


def evidence(u: np.ndarray, sigma: np.ndarray, y: np.ndarray,
             dim: int) -> tuple[float, float, float]:
    """(evidence / n, alpha, beta) of one target ``y`` at the evidence-maximizing alpha, beta.

    Args:
        u: left singular vectors of F (n x r).
        sigma: squared singular values of F (r,).
        y: the target (n,).
        dim: d, the feature width (F^T F has d - r zero eigenvalues).
    """
    n = len(y)
    z = u.T @ y  # y in the basis of F's column space
    outside = max(float(y @ y - z @ z), 0.0)  # the part of y no weights can fit
    alpha, beta = 1.0, 1.0
    for _ in range(MAX_ITERATIONS):
        ratio = alpha / beta
        shrink = sigma + ratio
        gamma = float(np.sum(sigma / shrink))  # effective number of parameters
        m_norm = float(np.sum(sigma * z ** 2 / shrink ** 2))  # |m|^2
        residual = float(np.sum((z * ratio / shrink) ** 2)) + outside  # |F m - y|^2
        alpha = gamma / max(m_norm, 1e-12)
        beta = (n - gamma) / max(residual, 1e-12)
        if abs(alpha / beta - ratio) <= TOLERANCE * ratio:
            break
    ratio = alpha / beta
    shrink = sigma + ratio
    m_norm = float(np.sum(sigma * z ** 2 / shrink ** 2))
    residual = float(np.sum((z * ratio / shrink) ** 2)) + outside
    log_det = float(np.sum(np.log(alpha + beta * sigma))) + (dim - len(sigma)) * math.log(alpha)
    total = (n * math.log(beta) + dim * math.log(alpha) - n * math.log(2 * math.pi)
             - beta * residual - alpha * m_norm - log_det) / 2
    return total / n, alpha, beta
