# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""What a tool does with a problem the user must fix: one message, no
traceback."""
import sys


class ToolError(Exception):
    """A problem with a tool's config, files or environment that the user
    must fix; the message says what and how.

    ``exit_code`` is the tool's exit status (1; 2 for a command-line
    mistake, as argparse uses)."""

    exit_code = 1


def exit_with(error: BaseException) -> 'SystemExit':
    """The ``SystemExit`` that ends a tool with ``error``'s message on
    stderr and its ``exit_code`` (default 1), without a traceback; use as
    ``raise exit_with(e) from None``."""
    code = getattr(error, 'exit_code', 1)
    if code == 1:
        return SystemExit(str(error))  # Python prints it, exit status 1
    print(str(error), file=sys.stderr, flush=True)
    return SystemExit(code)
