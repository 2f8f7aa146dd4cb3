"""The shipped recipes (TOML files, installed with the package): `bidistill train quickstart` finds
`recipes/quickstart.toml` wherever the command runs; `shipped_recipe(name)` resolves a name."""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def shipped_recipe(name: str) -> Path | None:
    """The shipped recipe called `name` (with or without `.toml`), or None."""
    path = FOLDER / (name if name.endswith(".toml") else f"{name}.toml")
    return path if path.parent == FOLDER and path.is_file() else None


def shipped_names() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.toml"))
