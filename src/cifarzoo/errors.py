"""The one exception type a user sees.

Library code raises :class:`CifarzooError` (or a subclass) with a message that names
what is wrong and where, and what to do about it; the CLI prints it as one line and
exits with status 2. Anything else escaping is a bug and keeps its traceback.
"""


class CifarzooError(Exception):
    """An error caused by the user's input or environment, with an actionable message."""


class DataError(CifarzooError):
    """A dataset source is missing, corrupt or malformed."""


class FolderBusyError(CifarzooError):
    """A run or study folder is being written by another process (one writer per folder)."""


class TrainingError(CifarzooError):
    """A run stopped because it cannot succeed (non-finite loss, stalled learning)."""

    def __init__(self, message: str, *, kind: str = "error", diagnosis: str = ""):
        super().__init__(message)
        self.kind = kind  # "nan", "stall", "diverged", "oom", "error"
        self.diagnosis = diagnosis
