"""User-facing errors. The CLI prints these as one line (no traceback) and exits 2."""


class MaekitError(Exception):
    """A problem with the user's input or environment, with a message that names the fix."""
