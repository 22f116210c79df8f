"""The exception types for mistakes a user can make: bad input (bad path, bad option, wrong
file), and an installation that imports the wrong module."""


class UserError(Exception):
    """Bad input or usage. The message is one sentence saying what was wrong and what to do;
    the command line prints it without a traceback and exits with status 2."""


class WrongModuleError(ImportError):
    """An installed package of another project shadows one of ours (PyPI has an unrelated
    `kernels`). The message is one sentence; the command line prints it without a traceback
    and exits with status 1."""


def plural(count: int, noun: str) -> str:
    """"1 image", "2 images", "3 classes": a count in a message, in agreement with its noun."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {noun}{'es' if noun.endswith('s') else 's'}"
