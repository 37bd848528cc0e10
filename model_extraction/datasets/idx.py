"""The IDX format of MNIST and Fashion-MNIST, gzip-compressed or not.

Layout: two zero bytes, a type code, the number of dimensions ``d``, then ``d`` big-endian
uint32 sizes, then the values in C order, big-endian. A file whose length differs from what its
header announces is refused.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .errors import DatasetCorruptError

#: IDX type code -> numpy dtype (big-endian, as stored).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped if it is gzip (recognised by its magic bytes)."""
    raw = Path(path).read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DatasetCorruptError(path, f"truncated or corrupt gzip data ({exc})") from exc


def parse_idx(data: bytes, path: Path | str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into an array of native byte order (a read-only view for uint8 data).

    Raises `DatasetCorruptError` naming ``path`` when the header is not IDX or the length
    does not match the shape in the header.
    """
    if len(data) < 4:
        raise DatasetCorruptError(path, f"too short for an IDX header ({len(data)} bytes)")
    zero, code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or code not in IDX_DTYPES or ndim == 0:
        raise DatasetCorruptError(
            path, f"not an IDX file (magic bytes {data[:4].hex()}, expected 0000<type><ndim>)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetCorruptError(path, f"truncated IDX header ({len(data)} < {header} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DatasetCorruptError(
            path,
            f"size {len(data)} bytes does not match the IDX header (shape {shape}, "
            f"{dtype.name}: {expected} bytes); the file is truncated or corrupt",
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: Path | str) -> np.ndarray:
    """Read an IDX file (gzip or raw)."""
    path = Path(path)
    return parse_idx(read_bytes(path), path)


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes for ``array`` (any dtype in `IDX_DTYPES`, at least one dimension)."""
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes or array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"cannot write {array.dtype} arrays of {array.ndim} dims as IDX")
    header = bytes([0, 0, codes[native], array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    big = array.astype(native.newbyteorder(">"), copy=False)
    return header + np.ascontiguousarray(big).tobytes()


def write_idx(path: Path | str, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as IDX; gzip it when ``compress`` is True or the name ends in ``.gz``."""
    path = Path(path)
    data = encode_idx(array)
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path
