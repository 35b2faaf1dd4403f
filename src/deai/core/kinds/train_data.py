"""Data sets for training jobs: bundled ones by name, or a user's CSV or NPZ file.

Bundled data sets ship inside scikit-learn, so every provider loads them
offline; ``BUNDLED`` pins each one's size and the sha256 of its canonical
bytes, so a provider whose copy differs refuses the task instead of training
on other data.

A user file is checked whole and packed into the shard payload (the payload is
self-contained). Accepted forms:

- CSV: UTF-8, comma-separated numbers, one sample a line, the label (an
  integer ``0 <= label < 1000``) in the last column; one header line allowed.
- NPZ (``numpy.savez``): exactly two arrays, ``x`` (n × features, numbers) and
  ``y`` (n integer labels); no pickled objects.

Canonical bytes: ``x`` as little-endian float32, row-major, then ``y`` as
little-endian int64. They travel base64-encoded.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import zipfile
from dataclasses import dataclass

import numpy as np

from deai.core.errors import InvalidInput

MIN_ROWS = 10
MAX_FEATURES = 4096
MAX_CELLS = 5_000_000  # x values: 20 MB as float32
MAX_CLASSES = 1000


@dataclass(frozen=True)
class DataInfo:
    n: int
    features: int
    classes: int
    sha256: str


BUNDLED: dict[str, DataInfo] = {
    "digits": DataInfo(1797, 64, 10,
                       "faf2d98f61250c1cdc0b114323133d3c58da04f5c5d28bb78e4bde3c936a75b1"),
    "iris": DataInfo(150, 4, 3,
                     "879b81724528964779983358162a724401de00141f8cb9c922d27f908396b8c7"),
    "wine": DataInfo(178, 13, 3,
                     "300d849b9eb766c3058bcebb4f806f42766e213cbcd8402c411d3d592747e011"),
    "breast_cancer": DataInfo(569, 30, 2,
                              "f86286b06e0eb4fbbb699d6ba5df7f1432e65642369ae111d0e47b47d02338bc"),
}


def canonical(x: np.ndarray, y: np.ndarray) -> tuple[bytes, bytes]:
    return (np.ascontiguousarray(x, dtype="<f4").tobytes(),
            np.ascontiguousarray(y, dtype="<i8").tobytes())


def digest(x: np.ndarray, y: np.ndarray) -> str:
    xb, yb = canonical(x, y)
    return hashlib.sha256(xb + yb).hexdigest()


def parse_file(data: bytes, field: str = "input") -> tuple[np.ndarray, np.ndarray, DataInfo]:
    """Parse and check a user's CSV or NPZ; returns float32 x, int64 y and their summary."""
    if data.startswith(b"PK"):
        x, y = _npz(data, field)
    else:
        x, y = _csv(data, field)
    return x, y, check(x, y, field)


def check(x: np.ndarray, y: np.ndarray, field: str = "input") -> DataInfo:
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise InvalidInput(f"{field}: want x of shape (n, features) and y of shape (n,)",
                           field=field)
    n, f = x.shape
    if n < MIN_ROWS:
        raise InvalidInput(f"{field}: {n} samples; at least {MIN_ROWS} needed", field=field)
    if not 1 <= f <= MAX_FEATURES or n * f > MAX_CELLS:
        raise InvalidInput(f"{field}: {n} × {f} values; at most {MAX_FEATURES} features and "
                           f"{MAX_CELLS} values", field=field)
    if not np.isfinite(x).all():
        raise InvalidInput(f"{field}: every feature must be a finite number", field=field)
    if y.min() < 0 or y.max() >= MAX_CLASSES:
        raise InvalidInput(f"{field}: labels must be integers in [0, {MAX_CLASSES})",
                           field=field)
    if np.unique(y).size < 2:
        raise InvalidInput(f"{field}: labels must take at least two values", field=field)
    return DataInfo(n, f, int(y.max()) + 1, digest(x, y))


def pack(x: np.ndarray, y: np.ndarray) -> tuple[str, str]:
    xb, yb = canonical(x, y)
    return base64.b64encode(xb).decode(), base64.b64encode(yb).decode()


def unpack(xs: str, ys: str, info: DataInfo) -> tuple[np.ndarray, np.ndarray]:
    """Decode packed arrays and check them against their summary (size and digest)."""
    try:
        xb, yb = base64.b64decode(xs, validate=True), base64.b64decode(ys, validate=True)
    except ValueError:
        raise InvalidInput("payload data is not base64", field="shard") from None
    if len(xb) != 4 * info.n * info.features or len(yb) != 8 * info.n:
        raise InvalidInput("payload data does not match its shape", field="shard")
    if hashlib.sha256(xb + yb).hexdigest() != info.sha256:
        raise InvalidInput("payload data does not match its digest", field="shard")
    x = np.frombuffer(xb, dtype="<f4").reshape(info.n, info.features).astype(np.float32)
    return x, np.frombuffer(yb, dtype="<i8").astype(np.int64)


def _npz(data: bytes, field: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
        names = sorted(i.filename for i in infos)
        if names != ["x.npy", "y.npy"]:
            raise InvalidInput(f"{field}: an NPZ needs exactly the arrays x and y, found "
                               f"{[n.removesuffix('.npy') for n in names]}", field=field)
        if sum(i.file_size for i in infos) > 16 * MAX_CELLS + 4096:  # before inflating
            raise InvalidInput(f"{field}: arrays are too large", field=field)
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"{field}: not a readable NPZ file ({exc})", field=field) from None
    if x.dtype.kind not in "fiu":
        raise InvalidInput(f"{field}.x: must hold numbers, not {x.dtype}", field=f"{field}.x")
    if y.dtype.kind not in "iu" and not (
            y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all()):
        raise InvalidInput(f"{field}.y: labels must be integers", field=f"{field}.y")
    return x.astype(np.float32), y.astype(np.int64)


def _csv(data: bytes, field: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{field} is not UTF-8 (byte {exc.start})", field=field) from None
    rows: list[list[float]] = []
    labels: list[int] = []
    width = 0
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r").strip()
        if not line:
            continue
        where = f"{field}[line {lineno}]"
        cells = [c.strip() for c in line.split(",")]
        try:
            values = [float(c) for c in cells]
        except ValueError:
            if not rows and not labels and lineno == _first_line(text):
                continue  # a header
            raise InvalidInput(f"{where}: every column must be a number", field=where) from None
        if len(values) < 2:
            raise InvalidInput(f"{where}: want features then a label", field=where)
        if width and len(values) != width:
            raise InvalidInput(f"{where}: {len(values)} columns, earlier lines have {width}",
                               field=where)
        width = len(values)
        *feats, label = values
        if not all(math.isfinite(v) for v in feats):
            raise InvalidInput(f"{where}: features must be finite", field=where)
        if not label.is_integer() or not 0 <= label < MAX_CLASSES:
            raise InvalidInput(f"{where}: the label (last column) must be an integer in "
                               f"[0, {MAX_CLASSES})", field=where)
        rows.append(feats)
        labels.append(int(label))
        if len(rows) * (width - 1) > MAX_CELLS:
            raise InvalidInput(f"{field}: more than {MAX_CELLS} values", field=field)
    if not rows:
        raise InvalidInput(f"{field}: no samples", field=field)
    return np.asarray(rows, dtype=np.float32), np.asarray(labels, dtype=np.int64)


def _first_line(text: str) -> int:
    for lineno, raw in enumerate(text.split("\n"), start=1):
        if raw.strip():
            return lineno
    return 0
