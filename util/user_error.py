"""Failures a user can act on, and how they reach the user: one line ``error: ...`` naming the flag, file or key.

Code raises :class:`UserError` (or, as flag checks and file readers always have, a ValueError, FileNotFoundError or
other OSError whose message names what to fix). ``main.py`` and ``run_with_submitit.py`` print such a failure as one
line on stderr, without a traceback unless ``--debug`` or the environment variable ``DETR_DEBUG=1`` asks for one.
Anything else (a bug) keeps its traceback.
"""
import os

DEBUG_VARIABLE = "DETR_DEBUG"


class UserError(Exception):
    """A failure caused by what the user gave (a flag, a file, a key, the machine), not by a bug; the message says
    what to fix, on one line."""


# What is reported as one line: FileNotFoundError, PermissionError and the other OS errors are OSErrors.
USER_ERRORS = (UserError, ValueError, OSError, NotImplementedError)


def debug_requested(flag: bool = False) -> bool:
    """Whether a failure should show its traceback: ``--debug`` (``flag``) or ``DETR_DEBUG`` set to anything but
    '' or '0'."""
    return flag or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line. An error raised in a DataLoader worker reaches the main process wrapped
    in the worker's traceback ("Caught X in DataLoader worker process 0. Original Traceback ..."): its own message
    is the last line of that traceback."""
    text = str(exc)
    if "\nOriginal Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        exception_name, separator, message = last.partition(": ")
        text = message if separator and " " not in exception_name else last
    return " ".join(text.split())
