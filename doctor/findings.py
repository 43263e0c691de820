"""What a preflight check reports: a severity, a one-line cause and a one-line fix."""

from __future__ import annotations

from dataclasses import dataclass

#: ``error`` stops the run before training; ``warning`` is shown and the run goes on;
#: ``info`` states a deliberate choice worth knowing (e.g. a non-pretrained input size).
SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One result of a preflight check.

    Attributes:
        check: the check's name, e.g. ``leakage`` (stable: used in tags and tests).
        severity: one of :data:`SEVERITIES`.
        cause: what is wrong, in one line, with the numbers that show it.
        fix: what to change, in one line (a config override where there is one).
    """

    check: str
    severity: str
    cause: str
    fix: str

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {SEVERITIES}")

    def line(self) -> str:
        return f"{self.severity}: {self.check}: {self.cause} -- fix: {self.fix}"
