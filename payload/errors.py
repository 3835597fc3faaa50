"""The project's error type: what becomes a clean message for the person running JARVIS.

Anything raised as a :class:`JarvisError` (or a subclass) is the user's to fix:
a bad scenario or inventory, an unreachable host, a missing prerequisite, a
run directory that is not one.  ``fab`` prints its message and exits 2.
Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class JarvisError(Exception):
    """An error meant for the user, with a message that says what to do."""
