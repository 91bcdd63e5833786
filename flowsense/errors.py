"""Operator faults: the only exceptions flowsense raises on purpose.

    FlowsenseError            one-line message naming the fix, and a process exit code
    ├── UsageError  (exit 2)  bad arguments or configuration
    └── InputError  (exit 3)  input that cannot be read: missing, unreadable, not a capture;
                              also output folders that cannot be written

Bad *traffic* is never an exception: decoders set weird bits and bump counters instead.
"""


class FlowsenseError(Exception):
    exit_code = 1


class UsageError(FlowsenseError):
    exit_code = 2


class InputError(FlowsenseError):
    exit_code = 3
