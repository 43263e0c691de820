"""The classifier LightningModule, its backbones, learning-rate schedules and freezing callbacks."""
