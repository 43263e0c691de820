"""Datamodules, their image sources, and transforms derived from the backbone."""
