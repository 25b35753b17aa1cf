"""The import structure: no cycle between the top-level packages, no architecture importing another (shared parts
live in models/layers/ and the modules beside it), and one class name per class across the codebase."""
import ast
from collections import defaultdict
from pathlib import Path

import models

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("benchmarks", "cli", "datasets", "engine", "evaluation", "hubconf", "main", "models", "run",
             "run_with_submitit", "tools", "util")


def _sources():
    for path in sorted(REPO.rglob("*.py")):
        parts = path.relative_to(REPO).parts
        if parts[0] in (".venv", "tests") or parts[0].removesuffix(".py") not in TOP_LEVEL:
            continue
        yield path, ast.parse(path.read_text())


def _imported(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_no_cycle_between_top_level_packages():
    edges = defaultdict(set)
    for path, tree in _sources():
        source = path.relative_to(REPO).parts[0].removesuffix(".py")
        edges[source] |= {name.split(".")[0] for name in _imported(tree)
                          if name.split(".")[0] in TOP_LEVEL and name.split(".")[0] != source}

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges[start])

    cycles = sorted(a for a in edges if reaches(a, a, {a}))
    assert cycles == [], {a: sorted(edges[a]) for a in cycles}


def test_no_architecture_imports_another():
    # each registered architecture's package: where its builder lives
    package_dirs = {arch.build.__module__.split(".")[1] for arch in models.ARCHITECTURES.values()}
    assert len(package_dirs) == len(models.ARCHITECTURES)
    for path, tree in _sources():
        parts = path.relative_to(REPO).parts
        if parts[0] != "models" or len(parts) < 3 or parts[1] not in package_dirs:
            continue
        siblings = {f"models.{p}" for p in package_dirs if p != parts[1]}
        crossing = [n for n in _imported(tree) if any(n == s or n.startswith(s + ".") for s in siblings)]
        assert crossing == [], f"{path.relative_to(REPO)} imports {crossing}"


def test_every_class_name_is_used_once():
    where = defaultdict(list)
    for path, tree in _sources():
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                where[node.name].append(str(path.relative_to(REPO)))
    assert {name: files for name, files in where.items() if len(files) > 1} == {}
