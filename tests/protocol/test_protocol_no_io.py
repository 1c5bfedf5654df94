"""The protocol package must stay sans-IO: it imports no I/O module."""

from __future__ import annotations

import ast
import pathlib

import klieo_shm.protocol

FORBIDDEN = {"socket", "asyncio", "selectors", "mmap", "trio", "select"}


def test_protocol_modules_import_no_io() -> None:
    pkg = pathlib.Path(klieo_shm.protocol.__file__).parent
    offenders = []
    for path in sorted(pkg.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_layout_modules_import_no_io() -> None:
    import klieo_shm.layout

    pkg = pathlib.Path(klieo_shm.layout.__file__).parent
    for path in sorted(pkg.glob("*.py")):
        text = path.read_text()
        for name in FORBIDDEN:
            assert f"import {name}" not in text, f"{path.name} imports {name}"
