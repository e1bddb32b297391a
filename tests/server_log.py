"""Faults in a web server's log: the tracebacks that are not a client going away.

A browser that closes or navigates while the demo page is still uploading a drawing makes
the server log a traceback ending in ``starlette.requests.ClientDisconnect``. That is the
client's doing, not a fault of the demo; every other traceback is one.
"""

from __future__ import annotations

import re

HEADER = "Traceback (most recent call last):"
CLIENT_GONE = ("starlette.requests.ClientDisconnect",)
GROUPS = ("ExceptionGroup", "BaseExceptionGroup")  # their members are listed as tracebacks of their own
FRAME_PREFIX = re.compile(r"^[ \t]*\|[ \t]?")  # the "| " margin of an exception group's members


def raised(log: str) -> list[str]:
    """The exception line (``module.Class: message``) of each traceback in ``log``, in order."""
    lines = []
    for block in log.split(HEADER)[1:]:
        for line in block.splitlines()[1:]:
            line = FRAME_PREFIX.sub("", line)
            if line.strip() and not line[0].isspace():
                lines.append(line.strip())
                break
        else:
            lines.append("(a traceback with no exception line)")
    return lines


def server_faults(log: str) -> list[str]:
    """The exceptions in ``log`` that are faults of the server: all but client disconnects."""
    return [
        line
        for line in raised(log)
        if line.split(":")[0] not in CLIENT_GONE and not line.split(":")[0].endswith(GROUPS)
    ]
