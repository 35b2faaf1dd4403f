"""Who is really behind a provider key: operator, network origin, hardware fingerprint.

Keys are free, so one party can run many providers. Three links tie keys together:

- **operator**: the identity that signed the key's registration (``core.auth.
  operator_message``); a key registered without one is its own operator;
- **origin**: the network block the key registered from (``origin``): an IPv4
  address's /24, an IPv6 address's /48; a loopback address stays whole, so several
  agents on one test machine (bound to 127.0.0.2, 127.0.0.3, ...) can still differ;
- **fingerprint**: a digest of the hardware the key registered (``fingerprint``):
  CPU model, cores, memory, GPU models and identifiers, and the SHA-256 of the
  machine's ``/etc/machine-id`` the agent reports (two keys on one box share it).

``conflicts(a, b)`` is true when two providers share any link (or are the same key);
``diverse(candidate, parties)`` is true when a candidate conflicts with none of the
parties already on a task. An empty origin or fingerprint (unknown) links nothing.

Everything here is pure: the coordinator records the links at registration and the
matcher reads them from ``core.market.ProviderState``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping
from typing import Any

from deai.core.market import ProviderState


def conflicts(a: ProviderState, b: ProviderState) -> bool:
    """True if ``a`` and ``b`` may be one party: same key, operator, origin or fingerprint."""
    if a.id == b.id:
        return True
    return any(x and x == y for x, y in ((a.operator or a.id, b.operator or b.id),
                                        (a.origin, b.origin),
                                        (a.fingerprint, b.fingerprint)))


def diverse(candidate: ProviderState, parties: Iterable[ProviderState]) -> bool:
    """True if ``candidate`` shares no operator, origin, fingerprint or key with any party."""
    return not any(conflicts(candidate, p) for p in parties)


def origin(address: str) -> str:
    """The network block an address belongs to: ``a.b.c.0/24`` for IPv4, its /48 for IPv6,
    the full address for a loopback one; ``""`` when it is not an IP address."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return str(ip)
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def client_address(peer: str | None, forwarded_for: str | None, trust_forwarded: bool) -> str:
    """The address a request came from: the socket's peer, or, behind a proxy the operator
    trusts, the last hop of ``X-Forwarded-For`` (the one that proxy appended; the earlier
    entries are whatever the client chose to send)."""
    if trust_forwarded and forwarded_for:
        last = forwarded_for.split(",")[-1].strip()
        if last:
            return last
    return peer or ""


def fingerprint(hardware: Mapping[str, Any]) -> str:
    """SHA-256 of the registered hardware that identifies a box (not its benchmark, which
    varies run to run). Two identical machines that report no machine id and no GPU
    identifier share a fingerprint: the check errs towards keeping them apart."""
    gpus = hardware.get("gpus") or []
    devices = sorted([str(g.get("name", "")), str(g.get("uuid", ""))]
                     for g in gpus if isinstance(g, Mapping))
    ident = [str(hardware.get("cpu_model", "")), int(hardware.get("cores", 0) or 0),
             int(hardware.get("memory_mb", 0) or 0), devices,
             str(hardware.get("machine_id", "") or "")]
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def machine_id_digest(raw: str) -> str:
    """What an agent reports for its machine: a SHA-256 of the id, never the id itself
    (salted with this application's name, as machine-id(5) asks of programs that use it)."""
    return hashlib.sha256(f"deai-machine-id\n{raw.strip()}".encode()).hexdigest()
