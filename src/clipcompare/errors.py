"""Errors that are the user's to fix: the CLI prints them as one line and exits 2."""


class UserError(Exception):
    """A mistake in the user's input (bad spec, missing file, unknown class...).

    The CLI turns it into ``clipcompare: error: <message>`` and exit code 2, never a traceback.
    """

    exit_code = 2


class MissingWeightsError(UserError):
    """Pretrained weights are neither cached nor downloadable; ``filename`` is the file needed, if any."""

    def __init__(self, message: str, filename: str | None = None) -> None:
        super().__init__(message)
        self.filename = filename
