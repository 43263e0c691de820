"""Real short trials, one per diagnosis label: each is built to show its failure mode.

``tests/test_diagnosis.py`` checks :func:`doctor.diagnosis.diagnose` on hand-made curves; here
the curves come from a real fit (timm's tiny ``test_resnet``, random init, on the CPU) whose
configuration causes the behaviour, and the label the doctor reads from them must name it:

=====================  =====================================================================
``diverged``           learning rate 10: the training loss explodes far above that of guessing
``no_progress``        learning rate 1e-9: the training loss stays where it started
``majority_collapse``  digits with a 1000:1 long tail, unweighted loss, a linear probe: every
                       validation image goes to the head class while the loss falls
``overfitting``        full fine-tuning without regularization on digits whose training labels
                       are 60% wrong (validation labels right): the net memorizes them
``underfitting``       a linear probe on a frozen random backbone, stripes whose labels are 60%
                       wrong in both splits: train and validation accuracy both low, alike
``healthy``            the full fine-tune of generated stripes that ``test_trial.py`` trusts
=====================  =====================================================================

The two label-noise datasets are planted parts defined here, built by Hydra from
``data._target_`` like the real ones (as in ``tests/faulty_parts.py``). The preflight is off:
it has its own tests, and this file is about what the doctor says after the fit. Each trial
was checked to get its label over several seeds, not only the default one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from omegaconf import DictConfig
from sklearn.datasets import load_digits

from data_modules.datamodules import ClassificationDataModule, Split
from data_modules.synthetic import SyntheticDataModule
from doctor.diagnosis import Diagnosis
from sweeps.job.prepare import prepare_trial

HERE = "tests.test_diagnosis_trials"
QUIET = ["logger=none", "doctor.preflight.enabled=false"]


def relabel(targets: np.ndarray, share: float, num_classes: int,
            rng: np.random.Generator) -> np.ndarray:
    """``targets`` with about ``share`` of them moved to another class, chosen at random."""
    moved = rng.random(len(targets)) < share
    other = (targets + rng.integers(1, num_classes, len(targets))) % num_classes
    return np.where(moved, other, targets)


class MislabeledDigits(ClassificationDataModule):
    """``images_per_class`` of scikit-learn's digits per class, with ``train_label_noise`` of
    the training labels wrong; validation labels stay right."""

    def __init__(self, images_per_class: int = 30, train_label_noise: float = 0.0,
                 imbalance: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if imbalance != 1.0:
            raise ValueError("MislabeledDigits takes balanced digits only")
        self.images_per_class = images_per_class
        self.train_label_noise = train_label_noise

    def load_splits(self) -> tuple[list[str], Split, Split]:
        digits = load_digits()
        rng = np.random.default_rng(self.seed)
        chosen = np.sort(np.concatenate([
            rng.choice(np.flatnonzero(digits.target == c), self.images_per_class, replace=False)
            for c in range(10)
        ]))
        images = np.rint(digits.images[chosen] * (255.0 / 16.0)).astype(np.uint8)
        (train_items, train_y), val = self.split(list(images), digits.target[chosen])
        train_y = relabel(train_y, self.train_label_noise, 10, rng)
        return [str(c) for c in range(10)], (train_items, train_y), val


class NoisyStripes(SyntheticDataModule):
    """Generated stripes with ``label_noise`` of the labels wrong, in both splits."""

    def __init__(self, label_noise: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label_noise = label_noise

    def load_splits(self) -> tuple[list[str], Split, Split]:
        names, (train_items, train_y), (val_items, val_y) = super().load_splits()
        rng = np.random.default_rng(self.seed)
        return (names,
                (train_items, relabel(train_y, self.label_noise, len(names), rng)),
                (val_items, relabel(val_y, self.label_noise, len(names), rng)))


def diagnose_trial(cfg: DictConfig) -> Diagnosis:
    """Fit the trial of ``cfg`` and return the doctor's diagnosis of its curves."""
    prepared = prepare_trial(cfg)
    prepared.trainer.fit(prepared.model, datamodule=prepared.datamodule)
    return prepared.diagnose()


MakeCfg = Callable[..., DictConfig]


def test_huge_learning_rate_is_diagnosed_diverged(make_cfg: MakeCfg) -> None:
    # The loss blows up inside the first epoch (to ~60, against 1.1 for guessing among 3
    # classes) and partly falls back: the explosion itself names the divergence.
    cfg = make_cfg(*QUIET, "freeze=none", "optimizer.lr=10", "trainer.max_epochs=3")
    diagnosis = diagnose_trial(cfg)
    assert diagnosis.label == "diverged", diagnosis.reason
    assert "learning rate is too high" in diagnosis.reason


def test_overflowing_learning_rate_is_diagnosed_diverged_by_its_nan_loss(
        make_cfg: MakeCfg) -> None:
    # AdamW steps of ~1e6 overflow the weights, then the loss, to NaN within a few steps.
    cfg = make_cfg(*QUIET, "freeze=none", "optimizer.lr=1e6", "trainer.max_epochs=2")
    diagnosis = diagnose_trial(cfg)
    assert diagnosis.label == "diverged", diagnosis.reason
    assert "NaN" in diagnosis.reason


def test_vanishing_learning_rate_is_diagnosed_no_progress(make_cfg: MakeCfg) -> None:
    # One batch per epoch (all 39 training images) and no dropout: the epoch's training
    # loss changes only if the weights do. With small batches BatchNorm's batch statistics
    # alone move it by more than the 2% threshold from one shuffle to the next.
    cfg = make_cfg(*QUIET, "freeze=none", "regularization=none", "optimizer.lr=1e-9",
                   "data.batch_size=39", "trainer.max_epochs=3")
    diagnosis = diagnose_trial(cfg)
    assert diagnosis.label == "no_progress", diagnosis.reason
    assert "barely moved" in diagnosis.reason


def test_long_tail_with_unweighted_loss_is_diagnosed_majority_collapse(
        make_cfg: MakeCfg) -> None:
    # Class 0 has 174 digits, classes 6-9 two each; the head on a frozen random backbone
    # learns the prior (the loss falls from ~2.2 to ~1.6) and answers class 0 for everything.
    cfg = make_cfg(*QUIET, "data=digits", "data.imbalance=1000", "data.image_size=16",
                   "class_weight=none", "freeze=head_only", "optimizer.lr=3e-2",
                   "trainer.max_epochs=3")
    diagnosis = diagnose_trial(cfg)
    assert diagnosis.label == "majority_collapse", diagnosis.reason
    assert "predicted as class '0'" in diagnosis.reason  # the class's name


def test_memorizing_wrong_training_labels_is_diagnosed_overfitting(make_cfg: MakeCfg) -> None:
    # 200 training digits, 60% of them mislabeled; 100 validation digits labeled right. The
    # net first learns the digits (validation loss falls), then memorizes the wrong labels at
    # a constant learning rate: train accuracy near 1, validation ~0.4 and its loss rising.
    cfg = make_cfg(*QUIET, "data=digits", f"data._target_={HERE}.MislabeledDigits",
                   "+data.images_per_class=30", "+data.train_label_noise=0.6",
                   "data.val_fraction=0.34", "data.image_size=16", "data.batch_size=16",
                   "freeze=none", "regularization=none", "optimizer.lr=1e-2",
                   "lr_schedule=constant", "trainer.max_epochs=15")
    diagnosis = diagnose_trial(cfg)
    assert diagnosis.label == "overfitting", diagnosis.reason
    assert "validation loss up from" in diagnosis.reason


def test_linear_probe_on_unfittable_labels_is_diagnosed_underfitting(make_cfg: MakeCfg) -> None:
    # 10 stripe classes, 60% of the labels wrong in both splits: no model passes ~0.45
    # accuracy, and a linear head on frozen random features cannot memorize its way past it.
    # The head still learns the real part (the loss falls), so this is not no_progress.
    cfg = make_cfg(*QUIET, f"data._target_={HERE}.NoisyStripes", "+data.label_noise=0.6",
                   "data.num_classes=10", "data.images_per_class=30", "freeze=head_only",
                   "optimizer.lr=1e-1", "trainer.max_epochs=5")
    diagnosis = diagnose_trial(cfg)
    assert diagnosis.label == "underfitting", diagnosis.reason
    assert "below 0.60" in diagnosis.reason


def test_learnable_stripes_fine_tuned_well_are_diagnosed_healthy(make_cfg: MakeCfg) -> None:
    cfg = make_cfg(*QUIET, "freeze=none", "optimizer.lr=1e-2", "data.images_per_class=24",
                   "trainer.max_epochs=6")
    diagnosis = diagnose_trial(cfg)
    assert diagnosis.label == "healthy", diagnosis.reason
