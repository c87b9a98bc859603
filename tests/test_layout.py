"""The layout of train/: the study's modules import no JAX, the commands load their heavy packages
only after parsing their flags, and no module imports itself back through others (imports inside
functions included)."""

from __future__ import annotations

import ast
import importlib.metadata
import pathlib
import re
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
STUDY_MODULES = (
    "train.study.plan",
    "train.study.run_records",
    "train.study.runner",
    "train.study.tables",
    "train.study.plots",
    "train.study.stats",
    "train.report",
)


def test_the_study_and_the_report_import_no_jax():
    code = (
        f"import sys, {', '.join(STUDY_MODULES)}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


ENTRY_POINTS = ("train.main", "train.sweep", "train.report", "train.bench", "train.evaluate")
HEAVY_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax", "scipy", "matplotlib", "tensorflow",
                  "tensorflow_datasets")  # fmt: skip


def test_the_commands_import_no_heavy_package_before_parsing_their_flags():
    """Each takes 0.2-1 s to import: ``--help`` and a usage error come at once, and a Ctrl-C in the
    first moments of a command reaches its handler instead of an import's traceback."""
    code = (
        f"import sys, {', '.join(ENTRY_POINTS)}; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY_PACKAGES!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def _imports(path: pathlib.Path, package: str) -> set[str]:
    """The ``train`` modules a file imports anywhere in it (``from train.x import y`` counts as
    ``train.x.y`` when that is a module, else ``train.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != package:
                continue
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if _module_path(candidate).exists() else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == package)
    return found


def _module_path(name: str) -> pathlib.Path:
    path = ROOT.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def test_train_has_no_import_cycles():
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (ROOT / "train").rglob("*.py")
    }
    graph = {name: _imports(path, "train") - {name} for name, path in modules.items()}
    assert set().union(*graph.values()) <= set(modules), "imports of missing modules"

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for name in graph if (c := cycle_from(name))]
    assert not cycles, f"import cycles: {cycles[:3]}"


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_version_and_the_dependencies_are_pyprojects():
    # Every third-party package imported by jaxpool/, train/ or configs/ is a declared dependency
    # (not one that happens to arrive with another), and jaxpool.__version__ is the package's.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_normalized(re.split(r"[<>=!~;\[ ]", d)[0]) for d in project["dependencies"]}
    import jaxpool

    assert jaxpool.__version__ == project["version"]
    imported = set()
    for package in ("jaxpool", "train", "configs"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"jaxpool", "train", "configs"}
    distributions = importlib.metadata.packages_distributions()
    undeclared = {
        module: distributions.get(module)
        for module in third_party
        if not {_normalized(d) for d in distributions.get(module, [module])} & declared
    }
    # jaxlib comes with jax (which pins it); tensorflow only with the 'prepare' extra, imported
    # where a dataset is prepared from scratch.
    undeclared = {m: d for m, d in undeclared.items() if m not in ("jaxlib", "tensorflow")}
    assert not undeclared, f"imported but not in pyproject's dependencies: {undeclared}"
