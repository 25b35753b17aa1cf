"""How the tools under tools/ end: ``error: ...`` on one line and exit status 1 for a failure the user can fix
(``util.user_error``; the traceback with ``DETR_DEBUG=1``), as ``main.py`` does."""
import sys
from collections.abc import Callable

from util.user_error import USER_ERRORS, debug_requested, one_line


def run_tool(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """``main(argv)``, returning the exit status: 0, or 1 after printing a user error's one line on stderr."""
    try:
        main(argv)
    except USER_ERRORS as exc:
        if debug_requested():
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        return 1
    return 0
