"""The import table of ARCHITECTURE.md, enforced by reading every module's AST.

    core         stdlib, pydantic, numpy, deai.core
    store        deai.core, deai.store (+ third party)
    coordinator  anything but deai.provider, deai.client, deai.workloads
    provider     anything but deai.coordinator, deai.store
    workloads    deai.core, deai.workloads (+ third party)
    client       anything but deai.coordinator, deai.store, deai.provider, deai.workloads;
                 except the launchers (cli, devnet, demo), which start the other
                 processes and may import the coordinator's settings and server and
                 the provider's agent
    sim          deai.core, deai.sim (+ third party)

Imports inside ``if TYPE_CHECKING:`` count too: the table is about design, not run time.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PKG = SRC / "deai"

CORE_THIRD_PARTY = {"pydantic", "numpy"}

# package -> deai packages it must not import (None: anything outside the allow-list)
FORBIDDEN: dict[str, set[str]] = {
    "coordinator": {"provider", "client", "workloads"},
    "provider": {"coordinator", "store"},
    "client": {"coordinator", "store", "provider", "workloads"},
}
# package -> the only deai packages it may import
ONLY: dict[str, set[str]] = {
    "core": {"core"},
    "store": {"core", "store"},
    "workloads": {"core", "workloads"},
    "sim": {"core", "sim"},
}
LAUNCHERS = {"deai.client.cli", "deai.client.devnet", "deai.client.demo"}
LAUNCHER_MAY_IMPORT = {"deai.coordinator.settings", "deai.coordinator.server",
                       "deai.coordinator.__main__", "deai.provider.challenge",
                       "deai.provider.agent"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, absolute, with its line number."""
    name = module_name(path)
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            # `from deai.coordinator import server` imports deai.coordinator.server.
            found += [(node.lineno, f"{mod}.{a.name}") for a in node.names
                      if mod.startswith("deai") and a.name != "*"]
    return found


def violations(path: Path) -> list[str]:
    name = module_name(path)
    parts = name.split(".")
    if len(parts) < 2:
        return []  # deai/__init__.py
    layer = parts[1]
    bad = []
    for line, mod in imports_of(path):
        top = mod.split(".")[0]
        where = f"{path.relative_to(SRC)}:{line} imports {mod}"
        if top != "deai":
            if layer == "core" and top not in sys.stdlib_module_names | CORE_THIRD_PARTY:
                bad.append(f"{where} (core may import only stdlib, pydantic and numpy)")
            continue
        target = mod.split(".")[1] if mod.count(".") else None
        if target is None or target == layer:
            continue
        if layer in ONLY and target not in ONLY[layer]:
            bad.append(f"{where} ({layer} may import only deai.{', deai.'.join(ONLY[layer])})")
        elif target in FORBIDDEN.get(layer, set()):
            if name in LAUNCHERS and _launcher_may(mod):
                continue
            bad.append(f"{where} ({layer} may not import deai.{target})")
    return bad


def _launcher_may(mod: str) -> bool:
    # A name inside an allowed module (`from deai.coordinator.server import serve`) and
    # the package on the way to one (`from deai.coordinator import server`) are fine;
    # every other module named in the same statement is checked on its own entry.
    return any(mod == ok or mod.startswith(ok + ".") or ok.startswith(mod + ".")
               for ok in LAUNCHER_MAY_IMPORT)


MODULES = sorted(PKG.rglob("*.py"))


def test_there_is_something_to_check() -> None:
    assert any(module_name(p).startswith("deai.core.") for p in MODULES)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_module_respects_the_import_table(path: Path) -> None:
    assert violations(path) == []


# --- the checker itself ----------------------------------------------------------------

def _check(tmp_path: Path, module: str, source: str) -> list[str]:
    global SRC
    path = tmp_path.joinpath(*module.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    old, SRC = SRC, tmp_path
    try:
        return violations(path)
    finally:
        SRC = old


@pytest.mark.parametrize(("module", "source"), [
    ("deai.core.x", "import httpx"),
    ("deai.core.x", "import sqlalchemy.orm"),
    ("deai.core.x", "from torch import nn"),
    ("deai.core.x", "from deai.store import db"),
    ("deai.core.x", "from ..store import db"),
    ("deai.core.x", "import typing\nif typing.TYPE_CHECKING:\n    import fastapi\n"),
    ("deai.core.x", "def f():\n    import requests\n"),
    ("deai.store.x", "from deai.coordinator import app"),
    ("deai.workloads.x", "from deai.client import sdk"),
    ("deai.sim.x", "from deai.store import db"),
    ("deai.coordinator.x", "from deai.provider import agent"),
    ("deai.coordinator.x", "from deai import workloads"),
    ("deai.provider.x", "import deai.store.repo"),
    ("deai.provider.x", "from deai.coordinator.settings import Settings"),
    ("deai.client.sdk", "from deai.coordinator import settings"),
    ("deai.client.cli", "from deai.store import db"),
    ("deai.client.cli", "from deai.coordinator import app"),
    ("deai.client.cli", "from deai.provider.executor import run"),
    ("deai.client.cli", "from deai.workloads import embeddings"),
    ("deai.client.devnet", "from deai.coordinator.loops import matching"),
])
def test_checker_catches(tmp_path: Path, module: str, source: str) -> None:
    assert _check(tmp_path, module, source)


@pytest.mark.parametrize(("module", "source"), [
    ("deai.core.x", "import json, hashlib\nfrom pydantic import BaseModel\nimport numpy as np"),
    ("deai.core.x", "from . import money\nfrom .errors import DeAIError"),
    ("deai.store.x", "import sqlalchemy\nfrom deai.core import ledger"),
    ("deai.coordinator.x", "import fastapi\nfrom deai.store import db\nfrom deai.core import x"),
    ("deai.provider.x", "import torch\nfrom deai.client.sdk import Client\n"
                        "from deai.workloads import embeddings"),
    ("deai.client.sdk", "import httpx\nfrom deai.client.keys import Identity"),
    ("deai.client.cli", "from deai.coordinator import settings, server\n"
                        "from deai.provider.agent import run\nimport deai.coordinator.settings"),
    ("deai.client.devnet", "from deai.coordinator.server import serve"),
    ("deai.client.demo", "from deai.provider import agent"),
])
def test_checker_allows(tmp_path: Path, module: str, source: str) -> None:
    assert _check(tmp_path, module, source) == []
