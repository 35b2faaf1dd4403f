"""A deterministic training run that survives spot preemption: the example that
``deai lease run-resumable`` ships into a lease (one file, torch and the stdlib only).

    python3 lease_train.py --steps 400 --checkpoint ckpt.pt --output final.pt

A small MLP learns a fixed regression task (data drawn from seed 0) with Adam and
mini-batches drawn from a seeded generator, on one CPU thread with deterministic
algorithms: the same arguments give bitwise the same weights, however often the run
is stopped and resumed.

The contract with the runner (``client.lease_resume``):

- on start, resume from ``--checkpoint`` if it exists: model, optimizer, step and every
  RNG state (torch's global one and the batch generator's);
- save a checkpoint every ``--every`` steps, atomically (a temporary file, then
  ``os.replace``), so a copy taken at any moment is whole;
- on SIGTERM or once ``~/.deai/preempt`` exists (a spot lease's notice), finish the
  current step, save a checkpoint and exit with status 75 (``EX_TEMPFAIL``: resume me);
- at the end write ``--output`` (the model's state dict) and exit 0.

``--step-seconds`` paces each step (a stand-in for a heavier model, so a short run lasts
long enough to be preempted in a test or a demo); it changes no number.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

RESUME_ME = 75
_stop: list[int] = []


def _on_term(signum: int, frame: FrameType | None) -> None:
    _stop.append(signum)


if __name__ == "__main__":  # before torch is imported: a notice then must not kill the run
    signal.signal(signal.SIGTERM, _on_term)

import torch  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--every", type=int, default=50, help="checkpoint every N steps")
    p.add_argument("--checkpoint", default="ckpt.pt")
    p.add_argument("--output", default="final.pt")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--step-seconds", type=float, default=0.0)
    return p.parse_args(argv)


def model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(),
                               torch.nn.Linear(64, 64), torch.nn.Tanh(),
                               torch.nn.Linear(64, 1))


def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 16, generator=g)
    w = torch.randn(16, 1, generator=g)
    return x, torch.sin(x @ w) + 0.1 * torch.randn(2048, 1, generator=g)


def save(path: Path, state: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def noticed() -> bool:
    return bool(_stop) or (Path.home() / ".deai" / "preempt").exists()


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    ckpt = Path(args.checkpoint)
    torch.manual_seed(args.seed)
    net = model()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    batches = torch.Generator().manual_seed(args.seed + 1)
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        batches.set_state(state["batches"])
        torch.set_rng_state(state["rng"])
        step = int(state["step"])
        print(f"resumed at step {step} from {ckpt}", flush=True)

    def checkpoint() -> None:
        save(ckpt, {"model": net.state_dict(), "optimizer": opt.state_dict(),
                    "batches": batches.get_state(), "rng": torch.get_rng_state(),
                    "step": step})

    x, y = dataset()
    while step < args.steps:
        if noticed():
            checkpoint()
            print(f"preemption notice: checkpoint at step {step}, exiting", flush=True)
            return RESUME_ME
        idx = torch.randint(0, x.shape[0], (64,), generator=batches)
        loss = torch.nn.functional.mse_loss(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        step += 1
        if step % args.every == 0:
            checkpoint()
            print(f"step {step} loss {loss.item():.6f}", flush=True)
        if args.step_seconds:
            time.sleep(args.step_seconds)
    save(Path(args.output), net.state_dict())
    print(f"done: {step} steps, weights in {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
