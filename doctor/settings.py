"""The doctor's settings: ``doctor.preflight`` and ``doctor.thresholds`` in the config.

These dataclasses are the one place the defaults live: registered in Hydra's ConfigStore as
the schema of the ``doctor`` node (:data:`DoctorConf`), so a misspelled key or a value of
the wrong type fails when the config is composed. Ranges are checked when the doctor builds
them from the config (``__post_init__``), with a message naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PreflightSettings:
    """``doctor.preflight``: the checks before each trial (``python -m doctor preflight``
    runs them alone).

    Attributes:
        enabled: run the checks before each trial (``python -m doctor preflight`` always does).
        sample_images: images normalized to measure input statistics.
        max_abs_mean: |channel mean| of normalized inputs above this is a scaling fault.
        min_std: channel std of normalized inputs below this is a scaling fault.
        max_std: channel std of normalized inputs above this is a scaling fault.
        near_duplicate_distance: perceptual-hash bits (of 64) within which two images are
            near copies; -1 turns the near-duplicate check off.
        imbalance_ratio: largest/smallest class from which an unweighted plain-accuracy run
            is warned (the imbalance plain accuracy would hide).
        min_images_per_class: fewest training images per class before a warning.
        majority_share: share of one class from which the data counts as mostly one class.
        domain_shift: score (mean symmetric KL divergence per channel, :mod:`doctor.domain_shift`)
            above which the images' activations at the first BatchNorm layers count as far from
            the pretraining data; -1 turns the check off. Measured on EfficientNet-Lite0
            with 2 layers (``benchmarks/domain_shift.py``, 64 images, 3 seeds): tiles of
            photos 0.13-0.40, digits 45-65, line art 37-40, stripes 4.6-12 (grayscale photos
            54-57, microscopy 1.0, telescope 4.2). 1.5 sits between the groups, 3.8x above
            the highest photo batch and 3.1x below the lowest far one.
        domain_shift_layers: BatchNorm layers, counted from the input, that the domain-shift
            check compares (the forward pass stops after the last of them).
    """

    enabled: bool = True
    sample_images: int = 64
    max_abs_mean: float = 3.0
    min_std: float = 0.1
    max_std: float = 5.0
    near_duplicate_distance: int = 2
    imbalance_ratio: float = 3.0
    min_images_per_class: int = 5
    majority_share: float = 0.9
    domain_shift: float = 1.5
    domain_shift_layers: int = 2

    def __post_init__(self) -> None:
        if self.sample_images < 2:
            raise ValueError(f"doctor.preflight.sample_images={self.sample_images} must be >= 2")
        if not (self.domain_shift > 0 or self.domain_shift == -1):
            raise ValueError(f"doctor.preflight.domain_shift={self.domain_shift} must be > 0, "
                             "or -1 to turn the check off")
        if self.domain_shift_layers < 1:
            raise ValueError("doctor.preflight.domain_shift_layers="
                             f"{self.domain_shift_layers} must be >= 1")
        if not 0.0 < self.majority_share <= 1.0:
            raise ValueError(f"doctor.preflight.majority_share={self.majority_share} must be "
                             "in (0, 1]")


@dataclass
class Thresholds:
    """``doctor.thresholds``: when a trial's curves count as a symptom
    (:mod:`doctor.diagnosis`).

    Attributes:
        divergence_rise: validation loss ending this fraction above its first value, never
            having improved on it by more than the same fraction, is divergence; so is a
            training loss ending this fraction above its first value.
        explosion_factor: a training loss above this many times the loss of guessing
            uniformly (ln of the number of classes) is divergence (exploded).
        collapse_share: share of validation predictions in one class that is a collapse
            (with recall near chance).
        no_progress_drop: the training loss falling by less than this fraction of its first
            value is no progress.
        overfit_gap: training minus validation accuracy that counts as overfitting (with the
            validation loss ending ``overfit_rise`` above its minimum).
        overfit_rise: fraction above its minimum that validation loss must end at.
        underfit_accuracy: a best validation accuracy below this is underfitting (unless
            a larger symptom explains it).
        min_epochs: fewer epochs than this are too early to judge (``too_early``).
        chance_margin: a validation (balanced) accuracy within this of guessing, 1 / classes,
            is at chance: never healthy.
        steep_drop: a validation loss falling by this fraction in its last epoch is still
            learning: at chance, it is ``too_early``, not a failure.
        overfit_epochs: a train-validation accuracy gap above ``overfit_gap`` held this many
            last epochs is overfitting even while the validation loss still falls.
    """

    divergence_rise: float = 0.1
    explosion_factor: float = 10.0
    collapse_share: float = 0.9
    no_progress_drop: float = 0.02
    overfit_gap: float = 0.15
    overfit_rise: float = 0.1
    underfit_accuracy: float = 0.6
    min_epochs: int = 3
    chance_margin: float = 0.05
    steep_drop: float = 0.1
    overfit_epochs: int = 3

    def __post_init__(self) -> None:
        for name in ("collapse_share", "underfit_accuracy"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"doctor.thresholds.{name}={value} must be in (0, 1]")
        for name in ("min_epochs", "overfit_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"doctor.thresholds.{name}={getattr(self, name)} must be >= 1")


@dataclass
class DoctorConf:
    """The ``doctor`` node of the config: checks before each trial, diagnosis after it."""

    preflight: PreflightSettings = field(default_factory=PreflightSettings)
    thresholds: Thresholds = field(default_factory=Thresholds)
