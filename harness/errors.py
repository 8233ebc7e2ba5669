"""User-caused errors. The CLI prints their message (one sentence) and exits non-zero, without a traceback."""


class UserError(Exception):
    """An error the user can fix (bad study file, bad option, missing data or weights); the message says how."""
