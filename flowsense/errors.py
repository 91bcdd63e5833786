"""Operator faults: the only exceptions flowsense raises on purpose.

    FlowsenseError            one-line message naming the fix, and a process exit code
    ├── UsageError  (exit 2)  bad arguments or configuration
    └── InputError  (exit 3)  input that cannot be read: missing, unreadable, not a capture;
                              also output folders that cannot be written

Bad *traffic* is never an exception: decoders set weird bits and bump counters instead.
"""

from contextlib import contextmanager


class FlowsenseError(Exception):
    exit_code = 1


class UsageError(FlowsenseError):
    exit_code = 2


class InputError(FlowsenseError):
    exit_code = 3


@contextmanager
def reading(what: str):
    """Turn the OS errors of opening an input into a one-line InputError naming the fix."""
    try:
        yield
    except FileNotFoundError:
        raise InputError(f"{what}: no such file; check the path") from None
    except PermissionError:
        raise InputError(f"{what}: permission denied; make it readable or run with sudo") from None
    except IsADirectoryError:
        raise InputError(f"{what}: is a folder; give files, not a folder") from None
