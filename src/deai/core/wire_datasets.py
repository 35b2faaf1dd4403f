"""Wire models of the datasets API (``/api/datasets``, ``/api/explorer/datasets``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from deai.core.datasets import DatasetId, Terms
from deai.core.wire import In, Out

HEX64 = r"^[0-9a-f]{64}$"


class TrainInfo(In):
    """A training dataset's public summary: what a job needs to plan and bill."""

    n: int = Field(ge=10, le=10**8, strict=True)
    features: int = Field(ge=1, le=4096, strict=True)
    classes: int = Field(ge=2, le=1000, strict=True)
    sha256: str = Field(pattern=HEX64)


MAX_TRUSTED = 256  # providers a dataset's owner may name as the only ones to run its jobs

Trusted = Annotated[list[Annotated[str, Field(pattern=HEX64)]], Field(
    min_length=1, max_length=MAX_TRUSTED, description=(
        "the only providers (ids) its jobs' primaries and replicas are placed on: they "
        "read the rows; audits and referees stay the network's verifiers"))]


class DatasetIn(In):
    id: DatasetId
    name: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")
    blob_digest: str = Field(pattern=HEX64, description="the ciphertext's blob")
    size: int = Field(ge=1, le=10**12, strict=True, description="plaintext bytes")
    train: TrainInfo | None = None
    owner_key: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9+/]*={0,2}$")
    terms: Terms
    providers: Trusted | None = None  # None: any provider


class ProvidersIn(In):
    """The owner's new list of trusted providers (``null``: any provider again)."""

    providers: Trusted | None


class DatasetOut(Out):
    """A dataset's public face: never its content or a key."""

    id: str
    owner: str
    name: str
    size: int
    train: dict[str, Any] | None = None
    terms: Terms
    uses: int
    royalties: int
    created_at: float
    revoked_at: float | None = None
    deleted_at: float | None = None  # deleted by its owner: its content is gone
    providers: list[str] | None = None  # the only providers its jobs run on; None: any


class DatasetPrivateOut(DatasetOut):
    """What the owner (or a provider holding a released key) reads besides."""

    blob_digest: str
    owner_key: str | None = None


class UseOut(Out):
    dataset_id: str
    job_id: str
    job_owner: str
    kind: str
    price: int
    royalty_seq: int | None = None
    created_at: float
    job_status: str = ""
    released_to: list[str] = Field(default_factory=list)
    model_digest: str | None = None
    chain_head: str | None = None


class UsesOut(Out):
    """A page of a dataset's uses, oldest first."""

    uses: list[UseOut]
    next_after: int | None = Field(
        default=None, description="pass as ``after`` for the next page; null: the last page")


class PendingOut(Out):
    """A use of the owner's dataset whose leased providers wait for the key."""

    dataset_id: str
    job_id: str
    kind: str
    price: int
    providers: list[str]
    # leased, but neither named by the dataset nor a network verifier: never released
    # the key (``release`` refuses), to be refused (their leases predate the list)
    unlisted: list[str] = Field(default_factory=list)


class ReleaseIn(In):
    job_id: str = Field(min_length=1, max_length=40)
    keys: dict[str, str] = Field(min_length=1, max_length=64,
                                 description="provider id → the dataset key sealed to it")


class RefuseIn(In):
    job_id: str = Field(min_length=1, max_length=40)
    providers: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        min_length=1, max_length=64, description=(
            "providers leased for the job, none released the key yet, that the owner "
            "turns away: their leases fail and the task is placed again without them"))


class KeyOut(Out):
    dataset_id: str
    job_id: str
    wrapped: str
    blob_digest: str
