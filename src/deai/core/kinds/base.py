"""What every kind of job has in common, and the contract each kind fulfils.

A kind (embeddings, chat, train, command) knows, purely:
- its spec (a pydantic model with ``extra="forbid"``),
- how to split an input into shards, each with the most units it can bill,
- how to check a provider's output for a shard and meter the units it used,
- how to assemble accepted shard outputs into the job's result.

Running a shard is the provider's business (``deai.workloads``); checking
whether numbers are *right* is the verifier's (``deai.core.verify``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from deai.core import catalog, datasets
from deai.core.errors import InvalidInput


class SpecBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    model: str = Field(min_length=1, max_length=200)
    max_price: int = Field(ge=0, le=10**12, strict=True,
                           description="micro-units per 1,000 units of the kind")
    deadline: int = Field(default=3600, ge=10, le=7 * 24 * 3600, strict=True,
                          description="seconds")
    replicate: bool = Field(default=False, strict=True,
                            description="run every task on two providers and compare")
    accept_unverified: bool = Field(
        default=False, strict=True,
        description="when no checker can be found in time, accept a result unchecked "
                    "(marked unverified) rather than wait")
    sealed: bool = Field(default=False, strict=True,
                         description="the client encrypts the input (core.sealed); only "
                                     "``sealed_for`` may read it")
    sealed_for: tuple[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")], ...] = Field(
        default=(), max_length=64,
        description="a sealed job's parties: the providers and verifiers that may run, "
                    "check and read it")

    dataset_id: datasets.DatasetId | None = Field(
        default=None, description="train on this dataset (core.datasets) instead of an input")
    dataset_terms: datasets.Accepted | None = Field(
        default=None, description="the dataset's terms this job accepts (its consent)")

    @model_validator(mode="after")
    def _sealed_parties(self) -> SpecBase:
        if self.sealed and not self.sealed_for:
            raise ValueError("sealed_for: a sealed job names the parties that may read it")
        if self.sealed_for and not self.sealed:
            raise ValueError("sealed_for: only a sealed job names parties")
        if self.sealed and self.dataset_id is not None:
            raise ValueError("dataset_id: a sealed job brings its own input, not a dataset")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # An unsealed spec is stored exactly as before sealed jobs existed.
        out: dict[str, Any] = handler(self)
        if not self.sealed:
            out.pop("sealed", None)
            out.pop("sealed_for", None)
        if self.dataset_id is None and self.dataset_terms is None:
            out.pop("dataset_id", None)
            out.pop("dataset_terms", None)
        return out


@dataclass(frozen=True)
class Shard:
    payload: bytes
    items: int
    max_units: int
    blobs: tuple[str, ...] = ()  # the blobs the payload names by digest (a command's files)


@dataclass(frozen=True)
class Comparison:
    """Whether two results agree, with the statistic that decided it (kept as evidence)."""

    match: bool
    statistic: float = 0.0
    detail: str = ""


def first_error(exc: ValidationError, prefix: str) -> InvalidInput:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    field = f"{prefix}.{loc}" if loc else prefix
    return InvalidInput(f"{field}: {err['msg']}", field=field)


class Kind(ABC):
    name: ClassVar[str]
    unit: ClassVar[str]
    spec_type: ClassVar[type[SpecBase]]

    def parse_spec(self, data: dict[str, Any]) -> SpecBase:
        try:
            spec = self.spec_type.model_validate(data)
        except ValidationError as exc:
            raise first_error(exc, "spec") from None
        self.model(spec)
        return spec

    def model(self, spec: SpecBase) -> catalog.ModelInfo:
        return catalog.lookup(spec.model, field="spec.model", workload=self.name)

    def run_bound(self, spec: SpecBase) -> float | None:
        """Seconds an honest run of one shard may take at most, as the client's spec bounds
        it (None: the spec does not): a check's lease is held at least this long, whatever
        the checked result claims it took (``matching.check_hold``)."""
        return None

    @abstractmethod
    def split(self, spec: SpecBase, data: bytes) -> list[Shard]:
        """Validate the whole input and cut it into shards; raises InvalidInput."""

    def quote_shards(self, spec: SpecBase, inputs: int) -> list[int]:
        """The shard units of a job of ``inputs`` inputs, for a quote made without the
        input at hand (one unit per input, one shard, unless the kind knows better)."""
        return [inputs]

    def payload_units(self, shard: bytes) -> int | None:
        """The most units a shard (``split``'s payload) can bill, read from the shard
        alone, as ``split`` counted them for its ``max_units``; None if the kind cannot
        tell. A sealed job's client declares its shards' units and the coordinator cannot
        count a ciphertext, so a provider checks the declared units against this before
        it runs the shard (``provider.sealed``): an under-declared shard ran in full and
        was then refused, unpaid. Raises InvalidInput if the shard is not one."""
        return None

    @abstractmethod
    def meter(self, spec: SpecBase, shard: bytes, output: bytes) -> int:
        """Check an output's shape against its shard; return the units it used."""

    @abstractmethod
    def assemble(self, job_id: str, spec: SpecBase, outputs: list[bytes]) -> bytes:
        """Join accepted shard outputs, in shard order, into the job's result file."""

    def errors(self, outputs: list[bytes]) -> list[str]:
        """Failures the work itself reports (e.g. a command over its limit), for the job."""
        return []

    # --- verification ---------------------------------------------------------------------
    # A checker (replica or referee) runs ``check_payload``: by default the shard
    # itself, i.e. a re-execution; a kind may instead send something cheaper, such
    # as the claimed tokens to re-score in one forward pass.

    def compare(self, spec: SpecBase, shard: bytes, a: bytes, b: bytes) -> Comparison:
        """Do two outputs of the same shard agree? Exact bytes unless a kind knows better."""
        same = a == b
        return Comparison(same, 0.0 if same else 1.0, "identical" if same else "outputs differ")

    def check_payload(self, spec: SpecBase, shard: bytes, claimed: bytes,
                      nonce: bytes = b"") -> bytes | None:
        """What a checker runs to test ``claimed``; None: re-execute the shard. ``nonce``:
        the coordinator's draw when it places the check, for a kind that samples what it
        checks (training's segments): the claimant cannot know it when it commits."""
        return None

    def check(self, spec: SpecBase, shard: bytes, claimed: bytes,
              check_output: bytes) -> Comparison:
        """Does a checker's output support the claimed output?"""
        return self.compare(spec, shard, claimed, check_output)

    def compare_checks(self, spec: SpecBase, payload: bytes, a: bytes, b: bytes) -> Comparison:
        """Do two checkers that ran the same ``payload`` agree (replica against referee)?"""
        return self.compare(spec, payload, a, b)

    def wrong_checkpoints(self, claimed: bytes, other: bytes) -> list[tuple[int, str]]:
        """The checkpoints of ``claimed`` (step, the claim's chain hash there) that
        ``other``, a check's output or a re-run of the task, shows wrong: where a claim
        grew from checkpoints an earlier attempt recorded, whoever recorded a wrong one is
        to blame, not the claimant that resumed from it. Empty for kinds that keep no
        checkpoints."""
        return []

    def vouched(self, check_output: bytes) -> set[int]:
        """The checkpoints (by step) a check that replayed part of a claim vouched for: it
        answers for those only, not for what it was not asked to replay."""
        return set()

    # --- forced errors (Truebit): does a checker really check? -----------------------------
    # Where a check re-scores a claim instead of re-running the task, a checker could
    # answer "agrees" without doing the work. Now and then the network hands it a claim
    # it has made wrong on purpose (``forge``); a checker that does not notice
    # (``noticed``) is rubber-stamping. Kinds whose checks re-execute need none of this.

    def forge(self, spec: SpecBase, payload: bytes, draw: float) -> tuple[bytes, Any] | None:
        """A check payload made wrong on purpose, and what the network needs to know the
        checker noticed; None when this kind's checks cannot be rubber-stamped."""
        return None

    def noticed(self, spec: SpecBase, marker: Any, output: bytes) -> bool:
        """Whether a checker's ``output`` for a forged payload shows the planted error."""
        return True

    def meter_check(self, spec: SpecBase, payload: bytes, output: bytes) -> int:
        """Units a checker used running ``payload`` (a re-execution is metered as usual)."""
        return self.meter(spec, payload, output)
