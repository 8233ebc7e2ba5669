"""User-caused errors. The CLI prints their message (one sentence) and exits non-zero, without a traceback."""


class UserError(Exception):
    """An error the user can fix (bad study file, bad option, missing data or weights); the message says how."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (its lines joined, whitespace collapsed), at most ``limit`` characters;
    the exception's type name when it has no message."""
    return " ".join(str(e).split())[:limit] or type(e).__name__
