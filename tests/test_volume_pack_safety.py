"""A volume snapshot comes from another provider: its restore (``volume_pack.unpack``)
writes nothing outside the lease's home, whatever the archive holds (a chain of links
whose resolved path passes PATH_MAX, the trick of CVE-2025-4517 against ``tarfile``'s
``data`` filter; a link then a file through it; names that climb out; hard links and
devices), stops counting headers at its limit instead of reading them all first, and
leaves the home empty when it refuses; a legitimate home still comes back byte for byte.
Packing streams: a sparse file of 256 MiB costs the agent no 256 MiB of memory.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from deai.coordinator import access, leases, volumes
from deai.coordinator.service import Coordinator
from deai.core.wire_leases import HostIn, LeaseIn
from deai.core.wire_volumes import VolumeIn
from deai.provider import volume_pack
from deai.provider.volume_pack import BadSnapshot, VolumeFull
from tests.test_volume_service import CFG as LEASE_CFG
from tests.test_volume_service import HOST, HOST2, OWNER, c  # noqa: F401  (fixture c)

PAYLOAD = b"written by another provider's snapshot\n"


def tar_gz(add: Callable[[tarfile.TarFile], None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        add(tar)
    return buf.getvalue()


def entry(tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, *,
          link: str = "", data: bytes = b"", mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.size = kind, link, mode, len(data)
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def link_chain(target: str) -> bytes:
    """16 links, each to a 247-character folder beside it: a path through all of them
    resolves to more than PATH_MAX, where ``os.path.realpath`` (3.11.7) gives up and the
    ``data`` filter takes what is left as inside; the last link climbs to ``target``."""
    comp, steps = "d" * 247, "abcdefghijklmnop"

    def add(tar: tarfile.TarFile) -> None:
        path = ""
        for step in steps:
            entry(tar, os.path.join(path, comp), tarfile.DIRTYPE, mode=0o755)
            entry(tar, os.path.join(path, step), tarfile.SYMTYPE, link=comp)
            path = os.path.join(path, comp)
        last = os.path.join(*steps, "l" * 254)
        entry(tar, last, tarfile.SYMTYPE, link="../" * len(steps) + target)
        entry(tar, os.path.join(last, "pwned"), data=PAYLOAD)

    return tar_gz(add)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    home, outside = tmp_path / "home", tmp_path / "outside"
    home.mkdir()
    outside.mkdir()
    return home, outside


def refused(data: bytes, home: Path, error: type[Exception] = BadSnapshot) -> None:
    with pytest.raises(error):
        volume_pack.unpack(data, home, 1 << 30)
    assert list(home.iterdir()) == [], "a refused snapshot left part of itself behind"


def test_a_link_chain_past_path_max_writes_nothing_outside(dirs: tuple[Path, Path]) -> None:
    home, outside = dirs
    refused(link_chain("../outside"), home)
    assert list(outside.iterdir()) == [], "the snapshot wrote outside the home"


def test_a_planted_snapshot_restores_nothing_outside_on_the_next_host(
        c: Coordinator, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    """As the coordinator hands it over: provider A, hosting the owner's lease, uploads
    the chain as the volume's snapshot; the owner's next lease lands on provider B, whose
    agent may read it (a live mount) and restores it as ``LeaseRunner._restore`` does."""
    leases.set_host(c, LEASE_CFG, HOST2, HostIn(cpus=2, memory_mb=4096,
                                                prices={"cpu": 360_000, "memory_gb": 36_000}))
    volumes.create(c, OWNER, VolumeIn(name="v", size_gb=0.01))
    ask = LeaseIn(cpus=1, memory_mb=1024, hours=1, max_price_hour=10**6, volume="v")
    first = leases.create(c, OWNER, ask, exclude=frozenset({HOST2}))
    assert leases.heartbeat(c, HOST, [first.id], {}) == []
    evil = link_chain("../outside")
    volumes.ask_snapshot(c, OWNER, first.id)  # a live mount's snapshot is the owner's ask
    assert volumes.record(c, HOST, first.id, evil).head == hashlib.sha256(evil).hexdigest()
    leases.end(c, OWNER, first.id)
    volumes.record(c, HOST, first.id, evil)  # its final save
    second = leases.create(c, OWNER, ask, exclude=frozenset({HOST}))
    spec = next(x for x in leases.work_for(c, HOST2, set())[0] if x.id == second.id)
    assert spec.volume is not None and spec.volume.digest
    assert access.may_read_blob(c, HOST2, spec.volume.digest)
    home, outside = tmp_path / "b" / "home", tmp_path / "b" / "outside"
    home.mkdir(parents=True)
    outside.mkdir()
    with pytest.raises(BadSnapshot):
        volume_pack.unpack(c.blobs.get(spec.volume.digest), home, spec.volume.size_bytes)
    assert list(outside.iterdir()) == [] and list(home.iterdir()) == []


@pytest.mark.parametrize("case", ["link then file through it", "link to an absolute folder",
                                  "file over a link", "climbs with ..", "absolute name",
                                  "hard link", "device", "pipe"])
def test_members_that_could_leave_the_home_are_refused(dirs: tuple[Path, Path],
                                                        case: str) -> None:
    home, outside = dirs
    (outside / "victim").write_bytes(b"untouched")

    def add(tar: tarfile.TarFile) -> None:
        if case == "link then file through it":
            entry(tar, "l", tarfile.SYMTYPE, link="../outside")
            entry(tar, "l/pwned", data=PAYLOAD)
        elif case == "link to an absolute folder":
            entry(tar, "l", tarfile.SYMTYPE, link=str(outside))
            entry(tar, "l/sub/pwned", data=PAYLOAD)
        elif case == "file over a link":
            entry(tar, "victim", tarfile.SYMTYPE, link=str(outside / "victim"))
            entry(tar, "victim", data=PAYLOAD)
        elif case == "climbs with ..":
            entry(tar, "a/../../outside/pwned", data=PAYLOAD)
        elif case == "absolute name":
            entry(tar, str(outside / "pwned"), data=PAYLOAD)
        elif case == "hard link":
            entry(tar, "h", tarfile.LNKTYPE, link=str(outside / "victim"))
        elif case == "device":
            entry(tar, "null", tarfile.CHRTYPE)
        else:
            entry(tar, "fifo", tarfile.FIFOTYPE)

    refused(tar_gz(add), home)
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_bytes() == b"untouched"


def test_oversized_header_records_are_refused_before_they_are_read(
        dirs: tuple[Path, Path]) -> None:
    home, _ = dirs

    def long_name(tar: tarfile.TarFile) -> None:
        entry(tar, "x" * (volume_pack.MAX_HEADER + 1), data=b"1")

    refused(tar_gz(long_name), home)

    def global_header(tar: tarfile.TarFile) -> None:
        entry(tar, "a", data=b"1")

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "x"}) as tar:
        global_header(tar)
    refused(buf.getvalue(), home)


def test_restore_counts_headers_as_it_reads_them(dirs: tuple[Path, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A small gzip of one header repeated: the count stops at the limit; every header
    was read into memory before it, before (a few MiB of gzip held 3 million)."""
    home, _ = dirs
    monkeypatch.setattr(volume_pack, "MAX_MEMBERS", 100)
    header = tarfile.TarInfo("./")
    header.type = tarfile.DIRTYPE
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(header.tobuf(format=tarfile.USTAR_FORMAT) * 5000 + b"\0" * 1024)
    parsed = 0
    real = tarfile.TarInfo.frombuf.__func__  # type: ignore[attr-defined]

    def counting(cls: type[tarfile.TarInfo], buf: bytes, encoding: str,
                 errors: str) -> tarfile.TarInfo:
        nonlocal parsed
        parsed += 1
        return real(cls, buf, encoding, errors)  # type: ignore[no-any-return]

    monkeypatch.setattr(tarfile.TarInfo, "frombuf", classmethod(counting))
    refused(out.getvalue(), home, VolumeFull)
    assert parsed <= 101, f"{parsed} headers parsed for a limit of 100"


def test_content_past_the_cap_stops_the_restore(dirs: tuple[Path, Path]) -> None:
    home, _ = dirs

    def add(tar: tarfile.TarFile) -> None:
        entry(tar, "a", data=b"x" * 600)
        entry(tar, "b", data=b"y" * 600)

    with pytest.raises(VolumeFull):
        volume_pack.unpack(tar_gz(add), home, 1000)
    assert list(home.iterdir()) == []


def test_a_home_round_trips(tmp_path: Path) -> None:
    """Folders (one read-only), files, an empty one, relative and absolute links (a
    target means something inside the lease only, as it did when the lease made it),
    mtimes and modes: packed, restored and packed again, the same bytes."""
    home = tmp_path / "home"
    (home / "src" / "pkg").mkdir(parents=True)
    (home / "src" / "pkg" / "mod.py").write_bytes(os.urandom(5000))
    (home / "empty").write_bytes(b"")
    (home / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(home / "run.sh", 0o755)
    os.symlink("src/pkg/mod.py", home / "latest")
    os.symlink("/work/src", home / "abs")
    os.symlink("../usr", home / "src" / "up")
    (home / "ro").mkdir()
    (home / "ro" / "keep").write_text("kept")
    os.utime(home / "empty", (1_000_000, 1_000_000))
    os.chmod(home / "ro", 0o555)
    try:
        with volume_pack.pack(home, 1 << 20) as packed:
            data = packed.read()
        back = tmp_path / "back"
        back.mkdir()
        assert volume_pack.unpack(data, back, 1 << 20) == 5000 + len("#!/bin/sh\necho hi\n") + 4
        with volume_pack.pack(back, 1 << 20) as packed:
            assert packed.read() == data
        assert os.readlink(back / "abs") == "/work/src"
        assert os.readlink(back / "src" / "up") == "../usr"
        assert (back / "latest").read_bytes() == (home / "src" / "pkg" / "mod.py").read_bytes()
        assert os.stat(back / "ro").st_mode & 0o777 == 0o555
        assert os.stat(back / "run.sh").st_mode & 0o777 == 0o755
        assert os.stat(back / "empty").st_mtime == 1_000_000
    finally:
        for d in (home / "ro", tmp_path / "back" / "ro"):
            if d.exists():
                os.chmod(d, 0o755)


def test_a_tar_without_folder_entries_restores(tmp_path: Path) -> None:
    """Another writer may name a file before, or without, its folder."""
    def add(tar: tarfile.TarFile) -> None:
        entry(tar, "a/b/c.txt", data=b"c")
        entry(tar, "./a/d.txt", data=b"d")

    volume_pack.unpack(tar_gz(add), tmp_path, 100)
    assert (tmp_path / "a" / "b" / "c.txt").read_bytes() == b"c"
    assert (tmp_path / "a" / "d.txt").read_bytes() == b"d"


def test_pack_streams_a_sparse_file(tmp_path: Path) -> None:
    """A program in the lease makes a 256 MiB sparse file (no disk used): the agent's
    memory holds the compressed snapshot, not the tar of 256 MiB it was made from."""
    home = tmp_path / "home"
    home.mkdir()
    with open(home / "sparse", "wb") as f:
        f.truncate(256 << 20)
    tracemalloc.start()
    try:
        with volume_pack.pack(home, 1 << 30) as packed:
            _, peak = tracemalloc.get_traced_memory()
            data = packed.read()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"packing took {peak >> 20} MiB of memory"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert [(m.name, m.size) for m in tar] == [("sparse", 256 << 20)]


def test_pack_counts_hard_links_and_stops_at_the_compressed_cap(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "f").write_bytes(b"z" * 4000)
    for i in range(3):
        os.link(home / "f", home / f"link{i}")
    with pytest.raises(VolumeFull):  # four names of 4000 bytes: restored, four files
        volume_pack.pack(home, 12_000)
    noise = tmp_path / "noise"
    noise.mkdir()
    (noise / "r").write_bytes(os.urandom(20_000))
    with pytest.raises(VolumeFull):  # under the cap as content, over it packed
        volume_pack.pack(noise, 20_100)


def test_entries_scattered_across_deep_folders_stop_the_restore(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each member's folder is opened component by component: entries alternating between
    two deep folders cost the whole depth each, so the folders a restore may walk are
    counted (``MAX_WALK``, lowered here) and a snapshot past them is refused, its home
    emptied. Before, 16 MB of such a snapshot held the host's lease starts for hours."""
    monkeypatch.setattr(volume_pack, "MAX_WALK", 5_000)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for i in range(40):
            info = tarfile.TarInfo(("a/" if i % 2 else "b/") * 200 + f"f{i}")
            tar.addfile(info, io.BytesIO(b""))
    home = tmp_path / "home"
    home.mkdir()
    with pytest.raises(volume_pack.BadSnapshot, match="walk"):
        volume_pack.unpack(buf.getvalue(), home, 1 << 30)
    assert list(home.iterdir()) == []
