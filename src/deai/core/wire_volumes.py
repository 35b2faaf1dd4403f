"""Request and response bodies of the volume API (``/api/volumes``), and what a lease's
spec carries about its volume. Same compatibility rules as ``core.wire``."""

from __future__ import annotations

from pydantic import Field

from deai.core.wire import In, Out


class VolumeIn(In):
    name: str = Field(min_length=1, max_length=63)
    size_gb: float = Field(default=1.0, gt=0, le=1024)


class SnapshotOut(Out):
    digest: str
    size: int
    created_at: float
    lease_id: str
    provider_id: str
    kind: str


class VolumeOut(Out):
    id: str
    owner: str
    name: str
    size_bytes: int
    head: str | None = None  # the digest a new lease restores
    head_size: int | None = None
    created_at: float
    updated_at: float
    mounted_by: str | None = None  # the lease holding it (live, or saving its home)
    error: str | None = None  # why the last save failed (the head did not move)
    error_at: float | None = None
    snapshots: list[SnapshotOut] = Field(default_factory=list)  # newest first


class SnapshotFailedIn(In):
    """The provider could not save a lease's home (too big, unreadable)."""

    reason: str = Field(min_length=1, max_length=500)


class VolumeSpec(Out):
    """A lease's volume as its provider needs it: what to restore, and the cap."""

    id: str
    digest: str | None = None
    size_bytes: int
