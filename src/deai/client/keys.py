"""Ed25519 keys on disk: ``$DEAI_HOME/keys/NAME.key`` holds the 32-byte seed in hex.

``DEAI_HOME`` defaults to ``./.deai``, beside the devnet's database, so each
checkout has its own keys. Files are created 0600.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from deai.core import auth
from deai.core.errors import InvalidInput, NotFound

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def home() -> Path:
    return Path(os.environ.get("DEAI_HOME", ".deai")).resolve()


def keys_dir() -> Path:
    return home() / "keys"


@dataclass(frozen=True)
class Identity:
    name: str
    signing_key: SigningKey

    @property
    def id(self) -> str:
        return self.signing_key.verify_key.encode().hex()

    def sign(self, data: bytes) -> str:
        return self.signing_key.sign(data).signature.hex()

    def headers(self, method: str, path: str, body: bytes, *, network: str
                ) -> dict[str, str]:
        """A signed request's headers, for the coordinator whose network id is ``network``
        (``Client.network_id``): no other deployment accepts them."""
        ts = f"{time.time():.3f}"
        nonce = secrets.token_urlsafe(18)
        sig = self.sign(auth.message(method, path, body, ts, nonce, network=network))
        return {auth.HEADER_KEY: self.id, auth.HEADER_TS: ts, auth.HEADER_NONCE: nonce,
                auth.HEADER_SIG: sig}

    @classmethod
    def generate(cls, name: str = "") -> Identity:
        return cls(name, SigningKey.generate())


def verify(account_id: str, data: bytes, signature_hex: str) -> bool:
    try:
        VerifyKey(bytes.fromhex(account_id)).verify(data, bytes.fromhex(signature_hex))
        return True
    except Exception:
        return False


def _path(name: str) -> Path:
    if not _NAME.match(name):
        raise InvalidInput(f"key name {name!r}: use letters, digits, '.', '_' or '-'",
                           field="name")
    return keys_dir() / f"{name}.key"


def create(name: str, *, exist_ok: bool = False) -> Identity:
    path = _path(name)
    if path.exists():
        if exist_ok:
            return load(name)
        raise InvalidInput(f"key {name!r} already exists at {path}", field="name")
    path.parent.mkdir(parents=True, exist_ok=True)
    ident = Identity.generate(name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(ident.signing_key.encode().hex() + "\n")
    return ident


def load(name: str) -> Identity:
    path = _path(name)
    if not path.exists():
        raise NotFound(f"no key named {name!r} (looked in {path.parent}); "
                       f"create one with `deai keys new {name}`", field="key")
    seed = bytes.fromhex(path.read_text().strip())
    return Identity(name, SigningKey(seed))


def names() -> list[str]:
    d = keys_dir()
    return sorted(p.stem for p in d.glob("*.key")) if d.exists() else []


# --- which coordinator each network id belongs to --------------------------------------------

def networks_file() -> Path:
    return home() / "networks.json"


def bind_network(network_id: str, url: str) -> None:
    """Remember that ``network_id`` is the network of the coordinator at ``url``; refuse it
    from any other address.

    Every signed request signs the coordinator's network id, which the coordinator itself
    reports. One that reports another deployment's id would collect signatures that
    deployment accepts, from every key it sees (a request replayed there within two
    minutes). The keys of this home sign for a network at the address they first met it
    at only; one deployment served at two addresses is pinned by hand
    (``DEAI_NETWORK_ID``)."""
    path = networks_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    # One CLI at a time reads, adds and replaces the file: two at once lost bindings,
    # and a lost one would be trusted again at whatever address claimed it next.
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _bind(path, network_id, url)


def _bind(path: Path, network_id: str, url: str) -> None:
    try:
        known = json.loads(path.read_text())
    except FileNotFoundError:
        known = {}
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path}: unreadable ({exc}); remove it to start over",
                           field="network") from None
    if not isinstance(known, dict):
        raise InvalidInput(f"{path}: not a JSON object; remove it to start over",
                           field="network")
    first = known.get(network_id)
    if first == url:
        return
    if first is not None:
        raise InvalidInput(
            f"{url} says it is network {network_id}, which the keys in {home()} sign for at "
            f"{first} only: a coordinator that reports another deployment's id collects "
            f"signatures that deployment accepts. If both addresses serve one deployment, "
            f"pin it: DEAI_NETWORK_ID={network_id}", field="network")
    known[network_id] = url
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(known, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
