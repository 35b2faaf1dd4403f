"""The models the network knows: name, workload and what a provider needs to serve it.

A job naming a model outside this catalog is refused (``UnknownModel``); a model
in the catalog that no online provider serves makes the job unplaceable, which
the quote explains.
"""

from __future__ import annotations

from dataclasses import dataclass

from deai.core.errors import UnknownModel


@dataclass(frozen=True)
class ModelInfo:
    name: str
    workload: str
    memory_mb: int
    dims: int = 0
    aliases: tuple[str, ...] = ()
    description: str = ""


CATALOG: tuple[ModelInfo, ...] = (
    ModelInfo(
        name="all-MiniLM-L6-v2",
        workload="embeddings",
        memory_mb=512,
        dims=384,
        aliases=("sentence-transformers/all-MiniLM-L6-v2",),
        description="MiniLM sentence embeddings, 384 dimensions",
    ),
    ModelInfo(
        name="bwrap-sandbox",
        workload="command",
        memory_mb=256,
        description="a script or program run under bubblewrap: no network, read-only "
                    "system, CPU/memory/file/wall limits",
    ),
    ModelInfo(
        name="SmolLM2-135M-Instruct",
        workload="chat",
        memory_mb=1024,
        aliases=("HuggingFaceTB/SmolLM2-135M-Instruct",),
        description="SmolLM2 135M instruct chat model, 8k context",
    ),
    ModelInfo(
        name="mlp-digits",
        workload="train",
        memory_mb=256,
        description="MLP (features-128-64-classes, ReLU) trained deterministically on CPU",
    ),
    ModelInfo(
        name="cnn-digits",
        workload="train",
        memory_mb=256,
        description="small CNN for 8x8 images (conv16-conv32-pool-64-classes) on CPU",
    ),
)

_BY_NAME = {alias: m for m in CATALOG for alias in (m.name, *m.aliases)}


def lookup(name: str, *, field: str = "model", workload: str | None = None) -> ModelInfo:
    info = _BY_NAME.get(name)
    if info is None:
        known = ", ".join(m.name for m in CATALOG)
        raise UnknownModel(f"unknown model {name!r}; known models: {known}", field=field)
    if workload is not None and info.workload != workload:
        raise UnknownModel(
            f"model {name!r} is a {info.workload} model, not {workload}", field=field
        )
    return info


def models_for(workload: str) -> list[ModelInfo]:
    return [m for m in CATALOG if m.workload == workload]
