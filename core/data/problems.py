"""Data errors and problems: each names the file and says what was expected."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Severity(StrEnum):
    """An error makes a case or dataset unusable; a warning does not."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset, tied to the file where it was found."""

    path: Path
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        return f"{self.severity.upper():<7} {self.path}: {self.message}"


class DataError(ValueError):
    """Bad input data; ``str()`` names the file and what was expected."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = Path(path)
        self.message = message
        super().__init__(f"{self.path}: {message}")

    def problem(self) -> Problem:
        """The same, as a reportable problem."""
        return Problem(self.path, self.message)
