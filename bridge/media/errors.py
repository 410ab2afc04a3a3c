"""Errors raised by the media plane."""


class MediaError(RuntimeError):
    """A media resource could not be set up (no free port, bind failure, bad state)."""
