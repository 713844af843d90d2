"""Command-line support for every command of the workbench: argparse whose usage error becomes one
sentence (UsageError, a ValueError), never argparse's usage dump; and run_command, which runs a
command's body and turns the errors it expects into one sentence on stderr and an exit status."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

USAGE_STATUS = 2          # bad input: one sentence on stderr, nothing half-done
FAILED_STATUS = 1         # the machine stopped the command (an OSError: a full disk, a vanished folder)
INTERRUPTED_STATUS = 130  # the user's stop (Ctrl-C), as a shell reports a SIGINT


class UsageError(ValueError):
    """Bad input from the command line: one sentence, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        text = message.strip().rstrip(".")
        raise UsageError(f"{text[:1].upper()}{text[1:]}.")


def exit_status(e: SystemExit) -> int:
    """The status a SystemExit (argparse's --help) asked for, as a command's return value."""
    return int(e.code or 0) if isinstance(e.code, int) or e.code is None else USAGE_STATUS


def run_command(body: Callable[[], int], user_errors: tuple[type[Exception], ...], *, prefix: str = "error: ",
                describe: Callable[[Exception], str] = str, os_error: Callable[[OSError], str] | None = None,
                stops: tuple[type[BaseException], ...] = (), stopped: Callable[[BaseException], str] = str) -> int:
    """body()'s exit status, with the failures a command expects turned into one line on stderr:
    one of `user_errors` (the caller's bad input): `prefix` + describe(e), status 2; an OSError,
    where `os_error` is given: `prefix` + os_error(e), status 1; one of `stops` (the user's stop):
    stopped(e), status 130; a SystemExit (argparse's --help): its own status. Anything else (a
    bug, or an OSError or stop the caller does not handle) propagates with its traceback."""
    try:
        return body()
    except user_errors as e:
        print(f"{prefix}{describe(e)}", file=sys.stderr)
        return USAGE_STATUS
    except OSError as e:
        if os_error is None:
            raise
        print(f"{prefix}{os_error(e)}", file=sys.stderr)
        return FAILED_STATUS
    except stops as e:
        print(stopped(e), file=sys.stderr)
        return INTERRUPTED_STATUS
    except SystemExit as e:
        return exit_status(e)
