"""What a signed request signs, and the rules for accepting one.

A mutating request carries four headers: the signer's public key, a timestamp,
a nonce and an Ed25519 signature over

    NETWORK \\n METHOD \\n PATH \\n sha256(body) \\n TIMESTAMP \\n NONCE

``NETWORK`` is the coordinator's network id (``GET /api/network``: random, one per
deployment, shared by its replicas), so a request signed for one deployment is
refused by every other. The server refuses a request whose timestamp is more than
``MAX_SKEW`` seconds from its clock, or whose (key, nonce) it has seen inside that
window.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from deai.core.errors import InvalidInput

HEADER_KEY = "X-DeAI-Key"
HEADER_TS = "X-DeAI-Timestamp"
HEADER_NONCE = "X-DeAI-Nonce"
HEADER_SIG = "X-DeAI-Signature"
MAX_SKEW = 120.0

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NONCE = re.compile(r"^[0-9A-Za-z_-]{8,64}$")


def message(method: str, path: str, body: bytes, timestamp: str, nonce: str, *,
            network: str) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join([network, method.upper(), path, digest, timestamp, nonce]).encode()


_NETWORK = re.compile(r"^[0-9a-z_-]{1,64}$")


def is_network_id(value: object) -> bool:
    return isinstance(value, str) and bool(_NETWORK.match(value))


def is_account_id(value: str) -> bool:
    return bool(_HEX64.match(value))


def is_nonce(value: str) -> bool:
    return bool(_NONCE.match(value))


def result_message(assignment_id: str, digest: str, units: int) -> bytes:
    """What a provider signs when it submits a result, kept as evidence."""
    return f"deai-result\n{assignment_id}\n{digest}\n{units}".encode()


def key_list(values: Iterable[str], field: str) -> frozenset[str]:
    """Public keys (64 hex digits each, case-insensitive), blanks skipped; a malformed one
    is an ``InvalidInput`` naming ``field``."""
    keys = [v.strip().lower() for v in values if v.strip()]
    for k in keys:
        if not is_account_id(k):
            raise InvalidInput(f"{field}: not a public key (64 hex digits): {k!r}", field=field)
    return frozenset(keys)


def operator_message(operator: str, provider_id: str) -> bytes:
    """What an operator signs to claim a provider key as its own (``core.diversity``)."""
    return f"deai-operator\n{operator}\n{provider_id}".encode()
