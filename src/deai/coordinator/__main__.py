"""``python -m deai.coordinator --database-url URL --host H --port P --data-dir D [--devnet]
[--workers N] [--verifier-key HEX ...] [--trust-forwarded-for]``"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from deai.coordinator.server import serve
from deai.coordinator.settings import Settings
from deai.core.auth import is_account_id, key_list
from deai.core.errors import InvalidInput
from deai.core.verify.params import OFF


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m deai.coordinator")
    ap.add_argument("--database-url", default="", help="SQLAlchemy URL; default SQLite file")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--workers", type=int, default=1,
                    help="replica processes on this port (PostgreSQL only)")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--devnet", action="store_true", help="faucet on, short windows")
    ap.add_argument("--heartbeat-timeout", type=float, default=None)
    ap.add_argument("--lease-ttl", type=float, default=None)
    ap.add_argument("--challenge-window", type=float, default=None)
    ap.add_argument("--max-upload-bytes", type=int, default=None)
    ap.add_argument("--blob-quota-bytes", type=int, default=None,
                    help="bytes of uploads no job or file uses yet, per account")
    ap.add_argument("--blob-ttl", type=float, default=None,
                    help="seconds an unused upload is kept")
    ap.add_argument("--idempotency-ttl", type=float, default=None,
                    help="seconds an Idempotency-Key is remembered")
    ap.add_argument("--no-verify", action="store_true",
                    help="no canaries and no replication unless a job asks for it")
    ap.add_argument("--canary-share", type=float, default=None)
    ap.add_argument("--forced-share", type=float, default=None,
                    help="share of re-scoring checks handed a claim made wrong on purpose")
    ap.add_argument("--audit-share", type=float, default=None,
                    help="share of accepted results a trusted verifier re-runs")
    ap.add_argument("--verify-timeout", type=float, default=None)
    ap.add_argument("--verifier-key", action="append", default=[], type=verifier_key,
                    metavar="HEX", help="a trusted verifier's public key (repeatable; also "
                    "DEAI_VERIFIER_KEYS, comma-separated)")
    ap.add_argument("--trust-forwarded-for", action="store_true",
                    help="behind a reverse proxy: a provider's address is the last hop of "
                         "X-Forwarded-For")
    ap.add_argument("--diversity", default=None, metavar="ATTRS",
                    help="what no two parties on a task may share, comma-separated from "
                         "operator,origin,fingerprint (default: all three; a devnet: "
                         "operator)")
    a = ap.parse_args(argv)
    st = Settings(database_url=a.database_url)
    if a.data_dir is not None:
        st = replace(st, data_dir=a.data_dir.resolve())
    if a.devnet:
        st = st.for_devnet()
    overrides = {k: v for k, v in {
        "heartbeat_timeout": a.heartbeat_timeout, "lease_ttl": a.lease_ttl,
        "challenge_window": a.challenge_window, "max_upload_bytes": a.max_upload_bytes,
        "blob_quota_bytes": a.blob_quota_bytes, "blob_ttl": a.blob_ttl,
        "idempotency_ttl": a.idempotency_ttl,
    }.items() if v is not None}
    st = replace(st, **overrides)
    if a.no_verify:
        st = replace(st, verify=OFF)
    shares = {k: v for k, v in {"canary_share": a.canary_share, "forced_share": a.forced_share,
                                "audit_share": a.audit_share}.items() if v is not None}
    if shares:  # VerifyParams checks each lies in [0, 1]
        try:
            st = replace(st, verify=replace(st.verify, **shares))
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    if a.verify_timeout is not None:
        st = replace(st, verify_timeout=a.verify_timeout)
    st = replace(st, verifiers=verifier_keys(a.verifier_key),
                 trust_forwarded_for=a.trust_forwarded_for)
    if a.diversity is not None:
        attrs = tuple(x.strip() for x in a.diversity.split(",") if x.strip())
        bad = set(attrs) - {"operator", "origin", "fingerprint"}
        if bad:
            raise SystemExit(f"--diversity: unknown {', '.join(sorted(bad))}")
        st = replace(st, diversity=attrs)
    serve(st, a.host, a.port, workers=a.workers)


def verifier_key(value: str) -> str:
    """A verifier's public key: 64 hex digits (``deai keys show NAME``)."""
    key = value.strip().lower()
    if not is_account_id(key):
        raise argparse.ArgumentTypeError(f"not a public key (64 hex digits): {value!r}")
    return key


def verifier_keys(flags: list[str], env: str | None = None) -> frozenset[str]:
    """The flags' keys plus those of ``DEAI_VERIFIER_KEYS`` (comma-separated)."""
    raw = os.environ.get("DEAI_VERIFIER_KEYS", "") if env is None else env
    try:
        return key_list([*flags, *raw.split(",")], "DEAI_VERIFIER_KEYS")
    except InvalidInput as exc:
        raise SystemExit(exc.message) from None


if __name__ == "__main__":
    main()
