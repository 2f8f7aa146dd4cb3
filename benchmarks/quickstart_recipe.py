"""Benchmark helper: recipes made of the quickstart's run/data/model settings and stages of a benchmark's choosing."""

from __future__ import annotations

from pathlib import Path

from pipeline.recipe import Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]


def quickstart_recipe(out: Path, stages: str, overrides: list[str] = (), ddpm: bool = False,
                      init_from_teacher: bool = True, teacher_path: str = "") -> Recipe:
    """The quickstart recipe with its [[stages]] replaced by `stages` (TOML) and evaluation off, written to
    `<out>.toml` beside the run's folder; `ddpm=True` moves it to BI-DiffSR's DDPM process (the official one)."""
    text = (ROOT / "recipes" / "quickstart.toml").read_text()
    head = text[: text.index("[[stages]]")]
    if ddpm:
        head = head.replace('type = "resshift"', 'type = "ddpm"').replace('prediction_type = "residual"', "")
    if not init_from_teacher:
        head = head.replace("init_from_teacher = true", "init_from_teacher = false")
    if teacher_path:
        head = head.replace('[teacher]\nkind = "twin"', f'[teacher]\npath = "{teacher_path}"')
        head = head[: head.index("[process]")] + head[head.index("[teacher]"):]  # the teacher's own process
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.toml"  # beside the run's folder: a run claims only a new or empty folder
    path.write_text(head + stages + "\n[eval]\nenabled = false\n")
    return load_recipe(path, [f'run.output_dir="{out}"', "run.log_with=[]", *overrides])
