"""Errors that mean the user's input is wrong: the CLI prints them on one line and exits 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


class UsageError(ValueError):
    """Bad input: a malformed config, a missing checkpoint, an unknown name."""


def shown_path(path: str | Path) -> str:
    """A path as one line of a message: quoted and escaped where it holds a newline or another control."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def exception_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def read_toml_file(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file's content; a file that cannot be read or parsed is a UsageError naming it as `what`."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python < 3.11
        import tomli as tomllib

    shown = shown_path(path)
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {what} {shown}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {shown} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{what} {shown} is not valid TOML: {exc}") from None
    except ValueError as exc:  # a path no file can have, e.g. with a NUL byte in it
        raise UsageError(f"cannot read {what} {shown}: {exc}") from None
