"""Collects a trial's curves during the fit, for :func:`doctor.diagnosis.diagnose`."""

from __future__ import annotations

import lightning.pytorch as pl

from doctor.diagnosis import Context, Curves, Diagnosis, Thresholds, diagnose

_SERIES = {"train_loss": "train/loss", "val_loss": "val/loss", "train_acc": "train/acc",
           "val_acc": "val/acc"}


class CurveRecorder(pl.Callback):
    """Appends each epoch's train/val loss and accuracy, keeps the last confusion matrix.

    Reads at ``on_train_epoch_end``, when Lightning has aggregated both the epoch's training
    metrics and its validation. The confusion matrix comes from the module's
    ``last_val_confusion`` (see :class:`~lightning_modules.classifier.ImageClassifier`), the
    class names from the datamodule's ``classes``, for messages that name them.
    """

    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self.curves = Curves()
        self.thresholds = thresholds or Thresholds()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        for attribute, key in _SERIES.items():
            if key in metrics:
                getattr(self.curves, attribute).append(float(metrics[key]))
        confusion = getattr(pl_module, "last_val_confusion", None)
        if confusion:
            self.curves.confusion = confusion
        classes = getattr(getattr(trainer, "datamodule", None), "classes", None)
        if classes and not self.curves.classes:
            self.curves.classes = [str(name) for name in classes]

    def diagnosis(self, context: Context | None = None) -> Diagnosis:
        return diagnose(self.curves, self.thresholds, context)
