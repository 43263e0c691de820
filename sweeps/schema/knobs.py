"""The schema of every knob group and of the trainer, data and logger settings.

One dataclass per config node, one field per key any shipped choice of that group sets (a
key the chosen file does not set is simply not checked); the field declares the key's type
and allowed range (:mod:`sweeps.schema.rules`). Values come from the YAML files under
``conf/``, which stay the one place of defaults: these classes hold no default values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sweeps.schema.rules import Checked, flag, integer, ints, number, numbers, pair, text

#: ``trainer.precision``: Lightning's names (``lightning.fabric.connector``), and plateau's
#: ``auto`` (bf16-mixed on GPUs that support it, else 32-true).
PRECISIONS = ("auto", "64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed",
              "transformer-engine", "transformer-engine-float16", 64, 32, 16, "64", "32",
              "16", "bf16")
#: ``trainer.accelerator``: Lightning's registered accelerators and its aliases.
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "xla", "hpu")
CLASS_WEIGHTS = ("none", "balanced", "effective_number", "sampler")


@dataclass
class RunConf(Checked):
    """Top-level settings."""

    node = ""
    seed: Any = integer(ge=0, le=2**32 - 1, means="the random seed of data splits and init")
    feature_cache: Any = flag()
    cache_dir: Any = text(nullable=True)


@dataclass
class DataConf(Checked):
    """``data``: the datamodule's settings (every dataset's and its own)."""

    node = "data"
    batch_size: Any = integer(ge=1)
    num_workers: Any = integer(ge=0, means="loader processes; 0 loads in the trial's own")
    val_fraction: Any = number(gt=0, lt=1, means="share of images held out for validation")
    image_size: Any = integer(ge=16, nullable=True, means="network input side in pixels")
    mean: Any = numbers(nullable=True)
    std: Any = numbers(gt=0, nullable=True)
    seed: Any = integer(ge=0, le=2**32 - 1)
    imbalance: Any = number(ge=1, means="largest class / smallest class")
    num_classes: Any = integer(ge=2)
    images_per_class: Any = integer(ge=2)
    size: Any = integer(ge=8, means="side of the generated images")
    root: Any = text(nullable=True)
    decoded_cache: Any = flag()
    skip_bad_files: Any = flag()
    cache_dir: Any = text(nullable=True)


@dataclass
class BackboneConf(Checked):
    """``backbone``: the pretrained network."""

    node = "backbone"
    name: Any = text(means="a timm model name")
    pretrained: Any = flag()
    weights_file: Any = text(nullable=True)
    drop_path_rate: Any = number(ge=0, lt=1)
    dynamic_img_size: Any = flag()


@dataclass
class FreezeConf(Checked):
    """``freeze``: which backbone stages train."""

    node = "freeze"
    depth: Any = integer(ge=0, means="trained stages, counted from the top")
    milestones: Any = ints(ge=1, increasing=True, means="epochs at which a stage unfreezes")
    stages_per_milestone: Any = integer(ge=1)
    probe_epochs: Any = integer(ge=1, means="LP-FT's head-only epochs")
    lr_mult: Any = number(gt=0, means="LP-FT's fine-tuning learning rates / the probe's")
    warmup_epochs: Any = number(ge=0)
    train_bn: Any = flag()


@dataclass
class AugmentConf(Checked):
    """``augment``: the training images' random transforms."""

    node = "augment"
    scale: Any = pair(gt=0, le=1, means="share of the image a random crop keeps")
    hflip: Any = number(ge=0, le=1, means="probability of a horizontal flip")
    rotation: Any = number(ge=0, le=180, means="degrees")
    shift: Any = number(ge=0, lt=1, means="share of the image side")
    shear: Any = number(ge=0, lt=90, means="degrees")
    zoom: Any = pair(gt=0)
    num_ops: Any = integer(ge=0)
    magnitude: Any = integer(ge=0, le=30, means="RandAugment's magnitude, of 31 bins")


@dataclass
class ClassWeightConf(Checked):
    """``class_weight``: how the loss or the sampler treats rare classes."""

    node = "class_weight"
    method: Any = text(choices=CLASS_WEIGHTS)
    beta: Any = number(ge=0, lt=1, means="the effective-number weighting's beta")


@dataclass
class RegularizationConf(Checked):
    """``regularization``."""

    node = "regularization"
    dropout: Any = number(ge=0, lt=1, means="a probability")
    weight_decay: Any = number(ge=0)
    label_smoothing: Any = number(ge=0, lt=1)
    drop_path: Any = number(ge=0, lt=1, means="a probability")


@dataclass
class LrScheduleConf(Checked):
    """``lr_schedule``: the backbone's share of the learning rate."""

    node = "lr_schedule"
    backbone_lr_mult: Any = number(gt=0, means="backbone learning rate / the head's")


@dataclass
class SchedulerConf(Checked):
    """``lr_schedule.scheduler``: each schedule's own settings."""

    node = "lr_schedule.scheduler"
    warmup_epochs: Any = number(ge=0)
    min_lr_ratio: Any = number(ge=0, le=1, means="the final learning rate / the peak")
    pct_start: Any = number(gt=0, lt=1, means="share of the steps spent rising")
    div_factor: Any = number(gt=0)
    final_div_factor: Any = number(gt=0)
    monitor: Any = text()
    factor: Any = number(gt=0, lt=1, means="the learning rate's multiplier on a plateau")
    patience: Any = integer(ge=0)
    min_lr: Any = number(ge=0)
    step_epochs: Any = integer(ge=1)
    gamma: Any = number(gt=0, le=1, means="the learning rate's multiplier at each step")


@dataclass
class OptimizerConf(Checked):
    """``optimizer``."""

    node = "optimizer"
    lr: Any = number(gt=0, means="the head's learning rate")
    weight_decay: Any = number(ge=0)
    momentum: Any = number(ge=0, lt=1)
    nesterov: Any = flag()


@dataclass
class TrainerConf(Checked):
    """``trainer``: the Lightning Trainer's arguments plateau sets or users commonly add."""

    node = "trainer"
    max_epochs: Any = integer(ge=1, means="epochs per trial")
    min_epochs: Any = integer(ge=0, nullable=True)
    max_steps: Any = integer(ge=-1, means="-1: no limit")
    accelerator: Any = text(choices=ACCELERATORS)
    precision: Any = text(choices=PRECISIONS)
    deterministic: Any = flag(choices=(True, False, "warn"))
    log_every_n_steps: Any = integer(ge=1)
    num_sanity_val_steps: Any = integer(ge=-1)
    enable_checkpointing: Any = flag()
    enable_model_summary: Any = flag()
    default_root_dir: Any = text(nullable=True)
    num_nodes: Any = integer(ge=1)
    accumulate_grad_batches: Any = integer(ge=1)
    gradient_clip_val: Any = number(ge=0, nullable=True)
    limit_train_batches: Any = number(gt=0, nullable=True)
    limit_val_batches: Any = number(gt=0, nullable=True)
    check_val_every_n_epoch: Any = integer(ge=1)


@dataclass
class LoggerConf(Checked):
    """``logger``: MLflow's tracking store."""

    node = "logger"
    tracking_uri: Any = text(means="an MLflow tracking URI")
    experiment_name: Any = text()


#: Every node checked. Nodes that others interpolate come first (``seed`` in ``data.seed``,
#: ``regularization.*`` in the backbone's drop path and the optimizer's weight decay), so a
#: wrong value is named where the user set it.
KNOBS: tuple[type[Checked], ...] = (
    RunConf, RegularizationConf, DataConf, BackboneConf, FreezeConf, AugmentConf,
    ClassWeightConf, LrScheduleConf, SchedulerConf, OptimizerConf, TrainerConf, LoggerConf)
