"""Imports that no test runs: the benchmarks, load tools and command import the project's modules
inside functions (torch and plotting load only when a section runs), so a renamed module breaks them
silently. Each `from project.module import name`, at any depth, must resolve."""

from __future__ import annotations

import ast
import importlib
import importlib.util

import pytest

from tests.conftest import ROOT

PROJECT = ("attnserve", "benchmarks", "bundlespec", "export", "loadtest", "model", "service")
FILES = sorted(p for d in ("attnserve", "benchmarks", "export", "loadtest", "model") for p in (ROOT / d).rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_every_project_import_resolves(path):
    missing = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
            continue
        if node.module.split(".")[0] not in PROJECT:
            continue
        module = importlib.import_module(node.module)
        for alias in node.names:
            if not hasattr(module, alias.name) and importlib.util.find_spec(f"{node.module}.{alias.name}") is None:
                missing.append(f"{node.module}.{alias.name}")
    assert missing == []
