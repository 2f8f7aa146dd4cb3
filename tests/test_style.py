"""The code's one layout rule a reader sees first: no line of Python source is wider than 120 columns."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 120


def test_no_python_line_is_wider_than_120_columns():
    wide = [f"{path.relative_to(ROOT)}:{number} ({len(line)} columns)"
            for folder in ("students", "teachers", "pipeline", "benchmarks", "recipes", "tests")
            for path in sorted((ROOT / folder).rglob("*.py"))
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if len(line) > WIDTH]
    assert not wide, "lines wider than 120 columns:\n" + "\n".join(wide)
