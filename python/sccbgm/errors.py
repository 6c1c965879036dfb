"""Exceptions raised for bad user input (one class, so callers and the R package can catch it)."""

from __future__ import annotations


class SCCBGMError(ValueError):
    """Invalid input to an sccbgm function; the message says what is wrong and how to fix it."""
