"""The networks a training job can name, built to the shapes ``core.kinds.train`` bills.

- ``mlp``: features → 128 → ReLU → 64 → ReLU → classes.
- ``cnn``: an 8×8 single-channel image → conv 3×3 (16) → ReLU → conv 3×3 (32) →
  ReLU → max-pool 2 → 512 → 64 → ReLU → classes.

No dropout or batch norm: after initialisation a training step draws no
random numbers, so the data order is the only randomness and resuming from a
checkpoint needs no generator state. ``build`` seeds torch's global generator
for the initial weights inside ``fork_rng`` under a lock, so concurrent tasks
neither see nor disturb each other's draws.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from deai.core.kinds.train import CNN_CHANNELS, CNN_HIDDEN, CNN_SIDE, MLP_HIDDEN

_INIT_LOCK = threading.Lock()


def mlp(features: int, classes: int) -> nn.Module:
    h1, h2 = MLP_HIDDEN
    return nn.Sequential(nn.Linear(features, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(),
                         nn.Linear(h2, classes))


def cnn(features: int, classes: int) -> nn.Module:
    if features != CNN_SIDE * CNN_SIDE:
        raise ValueError(f"the CNN takes {CNN_SIDE}x{CNN_SIDE} images, not {features} features")
    c1, c2 = CNN_CHANNELS
    return nn.Sequential(
        nn.Unflatten(1, (1, CNN_SIDE, CNN_SIDE)),
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(c2 * (CNN_SIDE // 2) ** 2, CNN_HIDDEN), nn.ReLU(),
        nn.Linear(CNN_HIDDEN, classes))


ARCHS = {"mlp": mlp, "cnn": cnn}


def build(arch: str, features: int, classes: int, seed: int) -> nn.Module:
    """A freshly initialised network; the same arguments give the same weights."""
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHS[arch](features, classes)
