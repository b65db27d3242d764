"""Errors the CLI prints as one paragraph (never a traceback)."""
from __future__ import annotations


class OrchError(Exception):
    """A user-facing error: the message names the file/key/value and says how to fix it."""
