"""Errors a user can act on. The CLI prints their message as one line and exits 1."""


class TrainerError(Exception):
    """Base class: bad input, missing setup, or a failed run, explained in one line."""


class ConfigurationError(TrainerError):
    """A setting (option or environment variable) is missing or invalid."""


class DatabaseUnavailable(TrainerError):
    """The database cannot be opened or reached."""


class DatasetError(TrainerError):
    """The dataset relations are missing or hold nothing a model can learn from."""


class MissingRelation(DatasetError):
    """A query named a table, view or schema the database does not have (yet)."""


class InputFileError(TrainerError):
    """A file given on the command line is unreadable or malformed."""


class ArtifactError(TrainerError):
    """An artifact is missing, incomplete, or does not match its recorded hash."""


class NotFound(TrainerError):
    """A run or model version that was asked for does not exist."""


class TrainingFailed(TrainerError):
    """A training run ended `failed`; the message is the error stored with it."""

    def __init__(self, run_id: int, message: str):
        super().__init__(f"training run {run_id} failed: {message}")
        self.run_id = run_id
