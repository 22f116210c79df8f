"""The one exception type for mistakes a user can make (bad path, bad option, wrong file)."""


class UserError(Exception):
    """Bad input or usage. The message is one sentence saying what was wrong and what to do;
    the command line prints it without a traceback and exits with status 2."""
