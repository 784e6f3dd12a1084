"""One exception type for everything a user can get wrong; the CLI prints it as one line."""


class SathmrError(Exception):
    """A user-facing error: bad input, missing file, wrong weights. Never a bug."""
