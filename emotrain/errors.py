"""The one exception type that the CLI turns into a single clear line instead of a traceback."""

from emotrain.config import ConfigError


class UserError(ConfigError):
    """Bad input from the user (a path, a file, a flag): reported as one line, exit code 2."""
