"""``python -m deai.coordinator --database-url URL --host H --port P --data-dir D [--devnet]
[--workers N]``"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from deai.coordinator.server import serve
from deai.coordinator.settings import Settings
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
    ap.add_argument("--no-verify", action="store_true",
                    help="no canaries and no replication unless a job asks for it")
    ap.add_argument("--canary-share", type=float, default=None)
    ap.add_argument("--verify-timeout", type=float, default=None)
    a = ap.parse_args(argv)
    st = Settings(database_url=a.database_url)
    if a.data_dir is not None:
        st = replace(st, data_dir=a.data_dir.resolve())
    if a.devnet:
        st = st.for_devnet()
    overrides = {k: v for k, v in {
        "heartbeat_timeout": a.heartbeat_timeout, "lease_ttl": a.lease_ttl,
        "challenge_window": a.challenge_window, "max_upload_bytes": a.max_upload_bytes,
    }.items() if v is not None}
    st = replace(st, **overrides)
    if a.no_verify:
        st = replace(st, verify=OFF)
    if a.canary_share is not None:
        st = replace(st, verify=replace(st.verify, canary_share=a.canary_share))
    if a.verify_timeout is not None:
        st = replace(st, verify_timeout=a.verify_timeout)
    serve(st, a.host, a.port, workers=a.workers)


if __name__ == "__main__":
    main()
