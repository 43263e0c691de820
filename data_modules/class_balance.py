"""Class weighting for imbalanced data: loss weights or a re-balancing sampler."""

from __future__ import annotations

import torch

METHODS = ("none", "balanced", "effective_number", "sampler")


class ClassWeighting:
    """How the training signal is balanced across classes (``conf/class_weight``).

    * ``none``: plain cross-entropy.
    * ``balanced``: inverse frequency, ``w_c = N / (C * n_c)`` (scikit-learn's "balanced").
    * ``effective_number``: Cui et al. 2019, ``w_c ∝ (1 - beta) / (1 - beta ** n_c)``, scaled
      so the weights sum to C.
    * ``sampler``: unweighted loss; batches are drawn with replacement so that each class is
      equally likely (see :meth:`sample_weights`).

    Args:
        method: one of the above.
        beta: effective-number hyperparameter in [0, 1); 0.9999 is Cui et al.'s usual choice
            for large classes, smaller values weigh small differences in counts less.
    """

    def __init__(self, method: str = "none", beta: float = 0.999) -> None:
        if method not in METHODS:
            raise ValueError(f"class_weight method {method!r} is not one of {METHODS}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"class_weight.beta={beta} must be in [0, 1)")
        self.method = method
        self.beta = beta

    @property
    def resamples(self) -> bool:
        """True when balancing is done by the sampler rather than the loss."""
        return self.method == "sampler"

    def loss_weights(self, counts: torch.Tensor) -> torch.Tensor | None:
        """Per-class cross-entropy weights for training-set ``counts``; None for unweighted.

        Classes with no training image get weight 0 (they cannot contribute to the loss).
        """
        if self.method in ("none", "sampler"):
            return None
        counts = counts.to(torch.float64)
        present = counts > 0
        num_present = int(present.sum())
        weights = torch.zeros_like(counts)
        if self.method == "balanced":
            weights[present] = counts.sum() / (num_present * counts[present])
        else:
            effective = (1.0 - self.beta ** counts[present]) / (1.0 - self.beta)
            inverse = 1.0 / effective
            weights[present] = inverse * num_present / inverse.sum()
        return weights.to(torch.float32)

    @staticmethod
    def sample_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Per-sample weights ``1 / n_{y_i}`` that make every class equally likely to be drawn."""
        counts = torch.bincount(targets, minlength=num_classes).to(torch.float64)
        return (1.0 / counts)[targets]
