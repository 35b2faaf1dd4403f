"""Compile the Vyper contracts under ``contracts/`` to ABI and bytecode, once per process."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONTRACTS = Path(__file__).parent / "contracts"
NAMES = ("Token", "StakeVault", "Settlement")


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str


@functools.cache
def artifact(name: str) -> Artifact:
    if name not in NAMES:
        raise KeyError(f"no contract {name!r}; have {', '.join(NAMES)}")
    # Imported here: compiling takes a moment, and most callers only need ABIs.
    import vyper  # type: ignore[import-untyped]

    out = vyper.compile_code((CONTRACTS / f"{name}.vy").read_text(),
                             output_formats=["abi", "bytecode"])
    return Artifact(name, out["abi"], out["bytecode"])
