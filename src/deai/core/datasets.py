"""Datasets: an owner's encrypted data offered under terms, and the consent a job gives.

A dataset is a file its owner encrypted under a fresh dataset key (the AEAD of
sealed jobs, with associated data ``ad(dataset_id)``) and published with its
**terms**: a price per use (µ), the job kinds allowed, an optional expiry and
an optional number of uses. The coordinator stores the ciphertext and the key
wrapped to the owner only; it never holds the key.

A job names a dataset (``spec.dataset_id``) and the terms it accepts
(``spec.dataset_terms``), both inside the signed spec: the consent is explicit
on both sides. ``refusal`` says which term a job fails, if any, against the
dataset's current state; the coordinator refuses such a job with that term as
the field and moves no money.

Public metadata (name, owner, terms, size, uses) is listed openly; the content
never is. Training on a dataset uses only its public summary (rows, features,
classes, sha256) to plan and bill; the rows reach a leased provider through the
owner's key release (``deai dataset serve``).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAGIC = "deai-dataset/v1"
ID = re.compile(r"^ds_[0-9a-f]{24}$")
ID_PATTERN = r"^ds_[0-9a-f]{24}$"
SOURCE = "dataset:"  # a training payload's ``dataset`` for rows that come from a dataset
ALLOWABLE = ("train", "embeddings")
USABLE = frozenset({"train"})  # kinds whose jobs can run on a dataset today
MAX_NAME = 100

Kind = Literal["train", "embeddings"]


class Terms(BaseModel):
    """A dataset's terms, as its owner states them and a job accepts them."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    price_per_use: int = Field(ge=0, le=10**12, strict=True, description="µ per job")
    allow: tuple[Kind, ...] = Field(min_length=1, max_length=len(ALLOWABLE))
    expires_at: float | None = Field(default=None, ge=0, description="unix seconds")
    max_uses: int | None = Field(default=None, ge=1, le=10**9, strict=True)


class Accepted(BaseModel):
    """What a job's spec says it accepts (``spec.dataset_terms``): the price it pays and
    the kinds the terms allow; both must equal the dataset's current terms."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    price_per_use: int = Field(ge=0, le=10**12, strict=True)
    allow: tuple[Kind, ...] = Field(min_length=1, max_length=len(ALLOWABLE))


DatasetId = Annotated[str, Field(pattern=ID_PATTERN)]


def ad(dataset_id: str) -> bytes:
    """Associated data binding a dataset's ciphertext to its id."""
    return f"{MAGIC}|{dataset_id}".encode()


def refusal(terms: Terms, accepted: Accepted | None, kind: str, now: float,
            revoked: bool, uses: int) -> tuple[str, str] | None:
    """The first term a job of ``kind`` fails, as (term, reason); None when every term holds.

    Order: a revoked or expired dataset refuses everyone; then the job's kind; then
    the job's consent (the price and kinds it signed must be the current ones); then
    the count of uses.
    """
    if revoked:
        return "revoked", "the dataset is revoked by its owner"
    if terms.expires_at is not None and now >= terms.expires_at:
        return "expires_at", "the dataset's terms expired"
    if kind not in terms.allow:
        return "allow", (f"the terms allow {', '.join(terms.allow)} jobs, not {kind}")
    if accepted is None:
        return "dataset_terms", "a job naming a dataset must state the terms it accepts"
    if accepted.price_per_use != terms.price_per_use:
        return "price_per_use", (f"the price per use is {terms.price_per_use} µ; the job "
                                 f"accepted {accepted.price_per_use} µ")
    if sorted(accepted.allow) != sorted(terms.allow):
        return "allow", "the kinds the job accepted differ from the dataset's terms"
    if terms.max_uses is not None and uses >= terms.max_uses:
        return "max_uses", f"the dataset's {terms.max_uses} use(s) are all taken"
    return None


def field_of(term: str) -> str:
    """The spec field a refusal names."""
    return f"spec.dataset_terms.{term}"
