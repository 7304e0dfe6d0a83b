"""The package's floors: a lower floor never imports a higher one, not even inside a function.

0. the package's ``__init__``, ``core`` (torch only) and ``solo_check``;
1. ``config`` (OmegaConf, Hydra, solo's config functions), ``data``, ``evaluation``;
2. ``plugin`` (solo-learn's methods, Lightning);
3. ``cli`` and ``compare`` (the commands).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "solo_iclmsr"
FLOORS = {"": 0, "core": 0, "solo_check": 0, "config": 1, "data": 1, "evaluation": 1, "plugin": 2,
          "cli": 3, "compare": 3}


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _imports(path: Path, module: str):
    """Every ``solo_iclmsr.<part>`` a file imports (relative imports resolved)."""
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names if base == "solo_iclmsr"]
        else:
            continue
        for name in names:
            if name.startswith("solo_iclmsr.") and _part(name) in FLOORS:
                yield node.lineno, name


def test_no_floor_imports_a_higher_one():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        part = _part(module)
        assert part in FLOORS, f"{module}: give it a floor in tests/test_layers.py"
        for line, name in _imports(path, module):
            if FLOORS[_part(name)] > FLOORS[part]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    assert wrong == []
