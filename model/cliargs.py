"""argparse for every command of the workbench: a usage error becomes one sentence (UsageError,
a ValueError) that the command prints before exiting with status 2, never argparse's usage dump."""
from __future__ import annotations

import argparse


class UsageError(ValueError):
    """Bad input from the command line: one sentence, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        text = message.strip().rstrip(".")
        raise UsageError(f"{text[:1].upper()}{text[1:]}.")
