"""The package's floors: a module imports only from its own package and from packages on lower
floors, never from a higher one nor from another package on its floor, not even inside a
function. Every package has a floor of its own, so no circle of imports can pass between two.

From the bottom: ``core`` (torch only), ``errors``, ``solo_check``, the package's ``__init__``,
``config`` (OmegaConf, Hydra, solo's config functions), ``data``, ``evaluation``, ``plugin``
(solo-learn's methods, Lightning), ``runs`` (solo's entry points as functions: pretrain, linear,
knn, their checkpoints), ``compare`` (grids of runs), ``cli`` (the commands).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "solo_iclmsr"
ORDER = ("core", "errors", "solo_check", "", "config", "data", "evaluation", "plugin", "runs",
         "compare", "cli")
FLOORS = {part: floor for floor, part in enumerate(ORDER)}


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


def test_no_package_imports_its_own_floor_or_a_higher_one():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        part = _part(module)
        assert part in FLOORS, f"{module}: give it a floor in tests/test_layers.py"
        for line, name in _imports(path, module):
            if _part(name) != part and FLOORS[_part(name)] >= FLOORS[part]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    assert wrong == []
