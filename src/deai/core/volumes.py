"""Volumes for leases, pure: names, sizes, and the state of a volume's mount.

A volume is an owner's named, size-capped directory that outlives leases. A lease
that mounts it (``deai lease create --volume V``) gets the volume's head snapshot
restored into its home before it starts; the provider saves the home as a new
snapshot when the owner asks (``deai lease snapshot``) and when the lease ends,
and the volume's head moves to it. Snapshots are content-addressed blobs (the
sha256 of a deterministic tar), readable by the volume's owner and by the
provider of a live lease that mounts the volume, nobody else.

A mount (one per lease that named a volume) goes ``live → saving → done``
(``MOUNT_MOVES``): ``live`` while the lease is pending or active (one live
mount per volume); ``saving`` once the lease ended with its provider still
reachable, until the provider's final snapshot lands or ``save_timeout``
passes; ``done`` after that, or straight from ``live`` when the provider was
lost, the sandbox never started, or it failed (the last snapshot stands).
A new lease on the volume is not started while another mount is ``saving``:
it would restore the old head.
"""

from __future__ import annotations

import re
from enum import StrEnum

from deai.core.errors import Conflict, InvalidInput

MAX_SIZE_GB = 1024.0
MIN_SIZE_BYTES = 1024  # a kilobyte: a tar of an empty home fits
MAX_VOLUMES = 32  # per account
KEEP_SNAPSHOTS = 8  # per volume; older ones are dropped (their blobs too, if unused)
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class MountState(StrEnum):
    LIVE = "live"
    SAVING = "saving"
    DONE = "done"


MOUNT_MOVES: dict[MountState, frozenset[MountState]] = {
    MountState.LIVE: frozenset({MountState.SAVING, MountState.DONE}),
    MountState.SAVING: frozenset({MountState.DONE}),
    MountState.DONE: frozenset(),
}


class SnapshotKind(StrEnum):
    ASKED = "asked"  # deai lease snapshot
    END = "end"  # the lease ended


def check_move(current: str, new: MountState) -> None:
    if new not in MOUNT_MOVES[MountState(current)]:
        raise Conflict(f"a volume mount that is {current} cannot become {new.value}",
                       status=current)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidInput(f"name: {name!r} is not a volume name (1-63 characters of a-z, 0-9, "
                           "'.', '_', '-', starting with a letter or digit)", field="name")
    return name


def size_bytes(size_gb: float) -> int:
    """The cap in bytes of a volume of ``size_gb`` GiB (fractions allowed)."""
    if not size_gb > 0 or size_gb > MAX_SIZE_GB:
        raise InvalidInput(f"size_gb: between 0 and {MAX_SIZE_GB:.0f} GiB", field="size_gb")
    n = int(size_gb * 1024**3)
    if n < MIN_SIZE_BYTES:
        raise InvalidInput(f"size_gb: at least {MIN_SIZE_BYTES} bytes", field="size_gb")
    return n


def end_state(provider_reachable: bool, started: bool) -> MountState:
    """Where a live mount goes when its lease ends: ``saving`` when there is a home to
    save and a provider to save it, else ``done`` (the last snapshot stands)."""
    return MountState.SAVING if provider_reachable and started else MountState.DONE


def saving_blocks(state: str, ended_at: float | None, now: float, save_timeout: float) -> bool:
    """Whether a mount still holds its volume: live, or saving within the timeout."""
    if state == MountState.LIVE:
        return True
    return state == MountState.SAVING and (ended_at is None or now - ended_at <= save_timeout)
