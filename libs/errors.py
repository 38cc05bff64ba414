"""The one exception type for problems with what the user gave us (config, paths, files)."""


class UserError(Exception):
    """Bad input: a config value, a missing file, a mismatched checkpoint.

    Entry points print it as one line (``error: ...``) and exit with status 2, without a traceback.
    The message says what is wrong and, where it helps, what to do about it.
    """


def first_line(error: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f'{type(error).__name__}: {lines[0]}' if lines else type(error).__name__
