"""The packages are layers and imports flow one way: `students` (networks, binary layers, kernels, packing) imports
neither of the others, `teachers` (processes, sampling, teacher networks) imports `students` only, `pipeline`
imports both. Read from the source (every import statement, at any depth), so a violation fails here before it
becomes an import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {"students": set(), "teachers": {"students"}, "pipeline": {"students", "teachers"}}

# Function-level imports in the two lower layers, each for a reason at its line: heavy or optional dependencies only.
DEFERRED_OK = {
    ("students/packed_conv.py", "torch.utils.cpp_extension"),  # the compiler toolchain, only when kernels build
    ("students/packed_conv.py", "ninja"),  # optional: its binary's folder goes on PATH when installed
}


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at function level) for every import in a source file, `if TYPE_CHECKING:` blocks excepted."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_imports_flow_one_way():
    upward = []
    for package, allowed in ALLOWED.items():
        for path in modules(package):
            for module, _ in imports(path):
                top = module.split(".")[0]
                if top in ALLOWED and top != package and top not in allowed:
                    upward.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not upward, "imports against the layers (students <- teachers <- pipeline):\n" + "\n".join(upward)


def test_the_lower_layers_import_at_module_level():
    deferred = []
    for package in ("students", "teachers"):
        for path in modules(package):
            name = str(path.relative_to(ROOT))
            deferred += [f"{name}: {module}" for module, in_function in imports(path)
                         if in_function and (name, module) not in DEFERRED_OK]
    assert not deferred, "function-level imports (move them to the top, or name the reason in DEFERRED_OK):\n" + \
        "\n".join(deferred)


def test_the_checker_sees_imports_at_every_depth(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nimport a.b\nif TYPE_CHECKING:\n    import c\n"
                      "def f():\n    from pipeline.x import y\n    if True:\n        import teachers\n")
    assert imports(source) == [("typing", False), ("a.b", False), ("pipeline.x", True), ("teachers", True)]
