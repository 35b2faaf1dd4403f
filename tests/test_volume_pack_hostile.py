"""Packing a running lease's home (``volume_pack.pack``), whose program is hostile.

The root agent packs while the lease's program runs (``deai lease snapshot``), so each
entry may change between the listing and its open. ``os.fwalk`` told folders by
``is_dir()`` (a link followed) and opened them by name without ``O_NOFOLLOW`` or
``O_NONBLOCK``: a link to a folder, swapped to a pipe (or a host device) after the
listing, made the agent open it, and the pipe held the snapshot thread for good. The race
is made deterministic here: the link's target is swapped the moment the packer reads the
link. A pipe outside the home shows whether anything opened it (opening it for writing
without blocking succeeds only while it has a reader).

The packed home is a file for the upload to stream, capped at the coordinator's upload
limit as well as the volume's size: a home of 1 GiB of random bytes was held whole in
the agent's memory, and then refused by a coordinator taking 64 MiB.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

import pytest

from deai.core import wire
from deai.provider import volume_pack
from deai.provider.lease_runner import HostOffer, LeaseRunner
from deai.provider.volume_pack import VolumeFull
from deai.store.blobs import digest_of
from tests.netutil import Network


def members(packed: IO[bytes]) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(packed.read()), mode="r:gz") as tar:
        return {m.name: m for m in tar}


def has_reader(fifo: Path) -> bool:
    """Whether someone holds ``fifo`` open for reading; if so, our open-and-close lets a
    reader blocked in its open go on (to read an empty pipe). Not yet a pipe (a folder,
    or nothing while it is swapped): no reader either."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.EISDIR, errno.ENOENT):
            return False
        raise
    os.close(fd)
    return True


def pack_watching(home: Path, fifo: Path, cap: int = 1 << 20) -> tuple[bytes, bool]:
    """Pack ``home`` in a thread while watching ``fifo``: the bytes, and whether the
    packer ever opened it. Ends when the packer does, or (an old packer blocked in the
    pipe's open) once it is seen reading: opening the other end releases it."""
    out: dict[str, Any] = {}

    def packer() -> None:
        try:
            with volume_pack.pack(home, cap) as packed:
                out["data"] = packed.read()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            out["error"] = exc

    t = threading.Thread(target=packer, daemon=True)
    t.start()
    opened = False
    while t.is_alive():
        opened = has_reader(fifo) or opened
        t.join(0.01)
    if "error" in out:
        raise out["error"]
    return out["data"], opened


def test_a_link_swapped_from_a_folder_to_a_pipe_is_never_opened(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, outside = tmp_path / "home", tmp_path / "outside"
    home.mkdir()
    (outside / "target").mkdir(parents=True)
    (outside / "target" / "secret").write_text("host file")
    os.symlink(outside / "target", home / "link")
    (home / "mine").write_text("the lease's file")
    readlink = os.readlink

    def swap_then_readlink(path: Any, *, dir_fd: int | None = None) -> str:
        # what the lease's program does between the listing and the open, made certain
        if path == "link" and (outside / "target").is_dir():
            (outside / "target" / "secret").unlink()
            (outside / "target").rmdir()
            os.mkfifo(outside / "target")
        return readlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "readlink", swap_then_readlink)
    data, opened = pack_watching(home, outside / "target")
    assert not opened, "the packer opened a pipe outside the home through a link"
    got = members(io.BytesIO(data))
    assert set(got) == {"link", "mine"}
    assert got["link"].issym() and got["link"].linkname == str(outside / "target")


def test_pipes_and_links_to_pipes_and_folders_are_not_followed(tmp_path: Path) -> None:
    """Kept as links, the pipes skipped; nothing outside is read, and no pipe (in the
    home or out of it) holds the packer."""
    home, outside = tmp_path / "home", tmp_path / "outside"
    (home / "d").mkdir(parents=True)
    (home / "d" / "f").write_text("f")
    outside.mkdir()
    (outside / "secret").write_text("host file")
    os.mkfifo(outside / "pipe")
    os.mkfifo(home / "pipe")
    os.symlink(outside, home / "to_outside")
    os.symlink(outside / "pipe", home / "to_outside_pipe")
    os.symlink("pipe", home / "to_pipe")
    os.symlink("d", home / "d" / "loop")
    data, opened = pack_watching(home, outside / "pipe")
    assert not opened
    got = members(io.BytesIO(data))
    assert sorted(got) == ["d", "d/f", "d/loop", "to_outside", "to_outside_pipe", "to_pipe"]
    assert all(got[n].issym() for n in ("d/loop", "to_outside", "to_outside_pipe", "to_pipe"))


def test_the_packed_home_is_a_file_and_stops_at_the_upload_limit(tmp_path: Path) -> None:
    """Random bytes do not compress: 3 MiB of them pass an upload limit of 1 MiB under a
    volume of 1 GiB, and the error says which limit; under the limit, the result is a
    file at its start (streamed to the upload), not bytes in memory."""
    home = tmp_path / "home"
    home.mkdir()
    for i in range(3):
        (home / f"r{i}").write_bytes(os.urandom(1 << 20))
    with pytest.raises(VolumeFull, match="upload limit of 1048576 bytes"):
        volume_pack.pack(home, 1 << 30, 1 << 20)
    with volume_pack.pack(home, 1 << 30, 4 << 20) as packed:
        assert not isinstance(packed, bytes | bytearray)
        assert packed.tell() == 0 and os.fstat(packed.fileno()).st_size > 3 << 20
        assert sorted(members(packed)) == ["r0", "r1", "r2"]
    with pytest.raises(VolumeFull, match="volume's 2097152 bytes"):  # the smaller one
        volume_pack.pack(home, 2 << 20, 64 << 20)


class _Api:
    """What the runner says to the coordinator about a snapshot."""

    def __init__(self) -> None:
        self.saved: list[tuple[str, bool, bytes]] = []
        self.failed: list[tuple[str, str]] = []

    def save_snapshot(self, lease_id: str, data: bytes | IO[bytes]) -> Any:
        streamed = not isinstance(data, bytes)
        self.saved.append((lease_id, streamed, data.read() if streamed else data))
        return SimpleNamespace(head="0" * 64, head_size=1)

    def snapshot_failed(self, lease_id: str, reason: str) -> None:
        self.failed.append((lease_id, reason))


class _Client:
    def __init__(self, max_upload_bytes: int) -> None:
        self.max_upload_bytes = max_upload_bytes

    def network(self) -> wire.NetworkInfo:
        return wire.NetworkInfo(
            version="test", network_id="test", devnet=True, min_stake=0, fee_bps=0,
            challenge_window=1.0, heartbeat_timeout=1.0, lease_ttl=1.0,
            max_upload_bytes=self.max_upload_bytes)


@pytest.mark.parametrize("size", [1 << 10, 3 << 20])
def test_the_runner_streams_the_snapshot_and_reports_one_over_the_limit(
        tmp_path: Path, size: int) -> None:
    """The coordinator takes 1 MiB (``GET /api/network``): a small home is handed to the
    upload as a file; a 3 MiB one of random bytes is refused before any upload, and the
    owner hears that the upload limit stopped it."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "r").write_bytes(os.urandom(size))
    runner = LeaseRunner(_Client(1 << 20), None, HostOffer(cpus=1, memory_mb=1, prices={}))  # type: ignore[arg-type]
    api = runner.api = _Api()  # type: ignore[assignment]
    box = SimpleNamespace(home=home, spec=SimpleNamespace(
        id="L1", volume=SimpleNamespace(id="V1", size_bytes=1 << 30)))
    runner._upload(box)  # type: ignore[arg-type]
    if size < 1 << 20:
        assert api.failed == [] and [(lid, s) for lid, s, _ in api.saved] == [("L1", True)]
        assert sorted(members(io.BytesIO(api.saved[0][2]))) == ["r"]
    else:
        assert api.saved == []
        assert len(api.failed) == 1 and "upload limit of 1048576 bytes" in api.failed[0][1]


@pytest.mark.slow
def test_a_file_body_is_signed_and_streamed(tmp_path: Path) -> None:
    """``Client.request`` with a file (how the runner uploads a snapshot): a real
    coordinator checks the signature over the bytes it got, so a blob stored under the
    file's digest shows both ends agree on them."""
    net = Network(tmp_path)
    net.start_coordinator()
    try:
        with net.client("alice") as alice, open(tmp_path / "blob", "w+b") as f:
            alice.faucet(100_000_000)
            data = os.urandom(300_000)
            for i in range(0, len(data), 1000):  # small writes, some still in f's buffer,
                f.write(data[i:i + 1000])  # left at its end: sent (and signed) whole
            resp = alice.request("PUT", "/api/blobs", body=f,
                                 content_type="application/octet-stream")
            assert resp.json()["digest"] == digest_of(data)
            assert alice.download(digest_of(data)) == data
    finally:
        net.close()


def held_under(root: Path) -> list[str]:
    """What this process's open descriptors under ``root`` point at."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own, closed by now
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target == str(root) or target.startswith(f"{root}/"):
                out.append(target)
    return out


def test_a_home_nested_too_deep_is_refused_and_holds_no_descriptor(tmp_path: Path) -> None:
    """Folders nested past ``MAX_DEPTH`` stop the pack with ``BadSnapshot`` (reported to
    the owner) instead of holding a descriptor per level until the agent meets EMFILE;
    every descriptor the walk opened is closed."""
    home = tmp_path / "home"
    deep = home
    for _ in range(volume_pack.MAX_DEPTH + 10):
        deep = deep / "d"
    os.makedirs(deep)
    assert held_under(home) == []
    with pytest.raises(volume_pack.BadSnapshot) as refused:
        volume_pack.pack(home, 1 << 30)
    assert refused.value.field == "volume" and "deeper" in str(refused.value)
    # The walk's own descriptors, by where they point: a count of the process's would
    # move with any other thread's (a socket an earlier test left closing), as it did.
    assert held_under(home) == []
    ok = tmp_path / "ok"
    os.makedirs(ok.joinpath(*["d"] * (volume_pack.MAX_DEPTH - 2)))
    with volume_pack.pack(ok, 1 << 30) as packed:
        assert len(members(packed)) == volume_pack.MAX_DEPTH - 2
