"""Errors a user can cause, each rendered as one line; the CLI maps them to exit codes."""

from __future__ import annotations

from collections.abc import Sequence

# Exit codes: 0 converged, 1 some hosts failed, 2 bad input (nothing was sent), 3 lock held.
EXIT_OK = 0
EXIT_HOSTS_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_LOCKED = 3
# Stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake in what the user gave us: printed as one line, exit code 2, no traceback."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(UserError):
    """A cluster file problem: FILE:LINE: KEY.PATH: message."""

    def __init__(self, file: str, key_path: str, message: str, line: int | None = None):
        self.file, self.key_path, self.message, self.line = file, key_path, message, line
        where = f"{file}:{line}" if line else file
        key = f" {key_path}:" if key_path else ""
        super().__init__(f"{where}:{key} {message}")

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        """Each problem as its own one-line error."""
        return (self,)


class ConfigErrors(ConfigError):
    """Several cluster file problems found at once: str is one line each, in the given order.
    Its file, key_path, message and line are the first problem's."""

    def __init__(self, errors: Sequence[ConfigError]):
        first = errors[0]
        UserError.__init__(self, "\n".join(str(e) for e in errors))
        self.file, self.key_path, self.message, self.line = first.file, first.key_path, first.message, first.line
        self._errors = tuple(errors)

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        return self._errors


def in_file_order(errors: Sequence[ConfigError]) -> ConfigError:
    """One error to raise for one or more problems, sorted by line (those with none first: they
    are about the file as a whole, or a key it lacks)."""
    ordered = sorted(errors, key=lambda e: e.line or 0)
    return ordered[0] if len(ordered) == 1 else ConfigErrors(ordered)


class LockHeld(UserError):
    exit_code = EXIT_LOCKED


def printable(text: str) -> str:
    """Text from a host, safe for the operator's terminal: control characters (escape sequences
    included) shown as \\xNN instead of acted on."""
    return "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in text)
