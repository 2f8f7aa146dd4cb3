"""Errors and checks shared by every part of a recipe (the recipe's tables and the stage plug-ins)."""

from __future__ import annotations

import contextlib
import re

# Names that make paths: run.name, stage names.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class SettingError(ValueError):
    """One setting is wrong: `key` is its dotted path in the recipe (`stages[1].lr`), `message` says why."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


class RecipeError(ValueError):
    """A recipe problem, always naming the file and the key."""

    def __init__(self, source: str, key: str, message: str):
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")
        self.source, self.key = source, key


@contextlib.contextmanager
def named_in(source: str):
    """SettingErrors raised inside become RecipeErrors naming the recipe file `source`."""
    try:
        yield
    except SettingError as err:
        raise RecipeError(source, err.key, err.message) from None


def require(cond: bool, key: str, message: str) -> None:
    """Raise a SettingError for `key` unless `cond` holds."""
    if not cond:
        raise SettingError(key, message)


def require_name(value: str, key: str, what: str) -> None:
    """A name that becomes a folder or log name."""
    require(NAME.fullmatch(value) is not None, key,
            f"must be 1-100 letters, digits, '_', '-' or '.' (not starting with '.'), got {value!r}: it names {what}")
