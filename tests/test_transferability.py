"""LogME: the evidence it reports is the Bayesian linear model's log marginal likelihood, at
the alpha and beta that maximize it, and features that carry the labels score higher."""

from __future__ import annotations

import numpy as np
import pytest

from doctor.transferability import evidence, logme


def _marginal_likelihood(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, I / beta + F F^T / alpha), computed directly (n x n)."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    sign, log_det = np.linalg.slogdet(cov)
    assert sign > 0
    return float(-0.5 * (n * np.log(2 * np.pi) + log_det + y @ np.linalg.solve(cov, y)))


@pytest.mark.parametrize(("n", "d"), [(40, 8), (30, 60)])  # more rows than width, and fewer
def test_evidence_is_the_log_marginal_likelihood_at_its_maximum(n: int, d: int) -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(n, d))
    y = (f[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.float64)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    per_sample, alpha, beta = evidence(u, s ** 2, y, d)
    assert per_sample * n == pytest.approx(_marginal_likelihood(f, y, alpha, beta), rel=1e-9)
    for a, b in [(alpha * 1.5, beta), (alpha / 1.5, beta), (alpha, beta * 1.5),
                 (alpha, beta / 1.5)]:
        assert _marginal_likelihood(f, y, a, b) < per_sample * n


def test_features_that_carry_the_labels_score_higher() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=300)
    centers = rng.normal(size=(4, 32))
    noise = rng.normal(size=(300, 32))
    scores = [logme(centers[labels] * signal + noise, labels) for signal in (0.0, 0.5, 2.0)]
    assert scores[0] < scores[1] < scores[2]


def test_logme_refuses_one_class_and_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="two classes"):
        logme(np.ones((5, 3)), np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="5 feature rows for 4 labels"):
        logme(np.ones((5, 3)), np.zeros(4, dtype=int))
