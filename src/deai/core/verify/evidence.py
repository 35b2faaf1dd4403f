"""What a verdict's journal entry says about the outputs it compared: commitments, not
digests.

The journal is public, so an output digest written there would let anyone confirm a
guess of a client's output (a short answer, a label) by hashing candidates. Each
``*_output`` field of the evidence is therefore replaced by a commitment bound to
the task's input digest::

    commitment = sha256("deai/evidence/v1" 0x00 input_digest 0x00 output_digest)

The job's owner and the providers that ran the task know both digests and can check
the entry offline; anyone else would have to guess the input and the exact output
bytes together. The verdict itself (who, fault, statistic) stays public.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

TAG = b"deai/evidence/v1\x00"


def commitment(input_digest: str, output_digest: str) -> str:
    """The public stand-in for ``output_digest`` on a task whose input is ``input_digest``."""
    return hashlib.sha256(TAG + input_digest.encode() + b"\x00"
                          + output_digest.encode()).hexdigest()


def blind(evidence: Mapping[str, Any], input_digest: str) -> dict[str, Any]:
    """``evidence`` with every non-empty ``*_output`` digest replaced by its commitment."""
    return {k: commitment(input_digest, v) if k.endswith("_output") and isinstance(v, str)
            and v else v for k, v in evidence.items()}
