"""The sweeper side: the study loop that hands trials to Hydra's launcher.

:class:`~sweeps.sweeper.coordinator.StudySweeper` coordinates the parts: the sweep's settings
and their checks (:mod:`~sweeps.sweeper.settings`), creating the study and recovering the
trials a dead sweep left (:mod:`~sweeps.sweeper.study`), asking and suggesting within the
budget and the failure policy (:mod:`~sweeps.sweeper.asking`), the slots that keep trials in
flight (:mod:`~sweeps.sweeper.slots`), and which worker ends the study
(:mod:`~sweeps.sweeper.closing`). Nothing here imports Lightning, timm or torch.
"""
