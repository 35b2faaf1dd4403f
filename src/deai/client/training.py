"""Client side of training jobs: save a result's model file and metrics, draw the loss curve.

A training job's result is one JSON object (``core.kinds.train``) that names
the final model by blob digest. ``save(client, result, path)`` downloads that
blob (checked against its digest) next to the result file:

    results/<job>.jsonl                 the result itself
    results/<job>.model.safetensors     final weights (``model.*``) and optimizer state
    results/<job>.metrics.json          loss curve, test accuracy, the checkpoint chain

``plot(result, path)`` draws the loss curve and the test accuracy at each
checkpoint to a PNG with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from deai.client.sdk import Client
from deai.core.errors import DeAIError, InvalidInput


def parse(data: bytes) -> dict[str, Any] | None:
    """The result of a training job, or None for another kind's result file."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(obj, dict) and obj.get("kind") == "train" and "model_digest" in obj:
        return obj
    return None


def save(client: Client, result: dict[str, Any], path: Path,
         model: bytes | None = None) -> list[Path]:
    """Download the final model (unless given: a sealed job's, decrypted) and write the
    metrics beside ``path``; returns the files."""
    stem = path.with_suffix("")
    model = model if model is not None else client.download(result["model_digest"])
    if hashlib.sha256(model).hexdigest() != result["model_digest"]:
        raise DeAIError(f"model blob does not match its digest {result['model_digest']}")
    model_path = stem.with_name(stem.name + ".model.safetensors")
    model_path.write_bytes(model)
    metrics_path = stem.with_name(stem.name + ".metrics.json")
    metrics = {"job": result.get("job"), "model": result.get("model"),
               "steps": result.get("steps"), "model_digest": result["model_digest"],
               "chain": result.get("chain"), **result.get("metrics", {})}
    metrics_path.write_text(json.dumps(metrics, indent=1) + "\n")
    return [model_path, metrics_path]


def plot(result: dict[str, Any], path: Path) -> Path:
    """Draw loss per step and test accuracy per checkpoint to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = result.get("metrics") or {}
    loss, acc = m.get("loss") or [], m.get("test_accuracy") or []
    if not loss:
        raise InvalidInput("the result has no loss curve to plot", field="metrics.loss")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        ax.plot([p[0] for p in loss], [p[1] for p in loss], color="tab:blue", label="train loss")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy loss", color="tab:blue")
        if acc:
            ax2 = ax.twinx()
            ax2.plot([p[0] for p in acc], [p[1] for p in acc], "o-", color="tab:green",
                     label="test accuracy")
            ax2.set_ylabel("test accuracy", color="tab:green")
            ax2.set_ylim(0, 1)
        final = m.get("final_test_accuracy")
        title = f"{result.get('model', '')} · {result.get('job', '')}"
        if isinstance(final, (int, float)):
            title += f" · final test accuracy {final:.3f}"
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
