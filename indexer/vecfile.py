"""The memory-mapped vector file: the catalog's embeddings as one float16 matrix on disk.

Whole-library scoring (predict, classify, suggest) reads every vector of a library. Out of SQLite
that costs seconds per million photos (1.5 GB of pages, one blob per row); out of a flat file it
is a sequential read of 1 KB per photo, mapped a block at a time. Like ``vectors.faiss`` the file
is a derived cache of the catalog, never the source of truth:

- it records the catalog generation it reflects; a reader overlays the catalog's changes since
  then (:func:`overlay`, :func:`chunks`), a writer (the library's lock holder) patches the file in
  place (:func:`sync`) and writes the header last;
- it is untrusted input: opened without following a symbolic link, every size in its header is
  checked against the file's real size before anything is mapped, the header and the id array
  carry digests, and every block of vectors a CRC checked as it is read. Anything wrong means
  "rebuild from the catalog" (writers) or "read the catalog instead" (readers). A block a writer
  patches while a reader in another process maps it fails its CRC the same way.

Layout (little-endian)::

    [0, HEADER)                       magic, u32 length, JSON header, zero padding, 32-byte digest
    [HEADER, HEADER + cap*dim*2)      vectors, float16, one row per slot (unused slots are holes)
    [.., .. + cap*8)                  ids, int64, strictly increasing by slot; a deleted slot holds
                                      -(id + 1), so the order (and a later re-use of the id) stays

Rows are kept in catalog id order, so readers stream in the same order as the catalog. New ids
above the last one are appended; a re-embedded photo is patched in place; a deleted one is marked.
Anything else (an id inserted in the middle, a quarter of the slots dead, the capacity exceeded)
rewrites the file, atomically.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import disk_full_error, is_disk_full
from .files import atomic_write, open_derived

if TYPE_CHECKING:
    from .catalog import Catalog

FILENAME = "vectors.f16"
BLOCK = 32_768  # rows per CRC block, and per chunk a reader maps at a time (32 MB at 512-d)
HEADER = 65_536
_MAGIC = b"CLIPDESK-VECFILE-1\n"
_DIGEST = 32
_MAX_DIM = 1 << 16
_MAX_ROWS = 1 << 36
# A reader overlays at most this share of changed rows; a writer rewrites past this share of dead.
OVERLAY_LIMIT = 0.1
DEAD_LIMIT = 0.25
# Read-only maps, populated in one call where the system can (Linux: no page fault per 4 KB).
_MAP_ARGS = ({"flags": mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0), "prot": mmap.PROT_READ}
             if hasattr(mmap, "MAP_PRIVATE") else {"access": mmap.ACCESS_READ})


class VecFileError(Exception):
    """The vector file is missing, damaged, stale beyond catching up, or not this library's."""


@dataclass(frozen=True)
class VecHeader:
    generation: int  # the catalog generation the file reflects
    library: str  # the catalog's library id (a file copied from another library is refused)
    model: str
    dim: int
    rows: int  # slots in use (live + dead)
    live: int
    capacity: int
    ids_digest: str  # blake2b of the id array's used part
    crcs: list  # CRC-32 of each BLOCK rows of vectors (used part)


def _blake(data) -> str:
    return hashlib.blake2b(data, digest_size=_DIGEST).hexdigest()


def _decode_ids(raw: np.ndarray) -> np.ndarray:
    return np.where(raw < 0, -raw - 1, raw)


class VectorFile:
    """An open, validated vector file (read side). ``ids`` holds every slot's raw id."""

    def __init__(self, path: str, fd: int, header: VecHeader, raw_ids: np.ndarray):
        self.path, self._fd, self.header = path, fd, header
        self.raw_ids = raw_ids
        self.ids = _decode_ids(raw_ids)
        self.live_mask = raw_ids >= 0

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str, max_count: int | None = None) -> VectorFile:
        """Open and validate; raises :class:`VecFileError` for anything but an intact file of ours.

        ``max_count`` bounds the rows the file may declare (what the catalog can account for)."""
        fd = open_derived(path, VecFileError)
        try:
            header = _read_header(fd, os.fstat(fd).st_size, max_count)
            raw = np.frombuffer(_pread(fd, 8 * header.rows, _ids_offset(header)), dtype="<i8").astype(np.int64)
            if _blake(raw.tobytes()) != header.ids_digest:
                raise ValueError("id array checksum mismatch")
            ids = _decode_ids(raw)
            if len(ids) and (ids[0] < 0 or (len(ids) > 1 and not (np.diff(ids) > 0).all())):
                raise ValueError("ids not in increasing order")
            if int((raw >= 0).sum()) != header.live:
                raise ValueError("live count does not match the ids")
        except Exception as e:  # noqa: BLE001 - any damage means "rebuild"
            os.close(fd)
            raise VecFileError(f"{path} is damaged ({e})") from None
        return cls(path, fd, header, raw)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> VectorFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    @property
    def dim(self) -> int:
        return self.header.dim

    # ------------------------------------------------------------------ reading
    def _map_block(self, b: int) -> tuple[mmap.mmap, np.ndarray]:
        """Block ``b`` of vectors, mapped read-only (see ``_MAP_ARGS``) and checked against its
        CRC. The caller closes the map when done, so memory stays one block."""
        h = self.header
        lo, hi = b * BLOCK, min(h.rows, (b + 1) * BLOCK)
        start = HEADER + lo * h.dim * 2
        length = (hi - lo) * h.dim * 2
        base = start - start % mmap.ALLOCATIONGRANULARITY
        m = mmap.mmap(self._fd, length + start - base, offset=base, **_MAP_ARGS)
        view = np.frombuffer(m, dtype="<f2", count=(hi - lo) * h.dim, offset=start - base).reshape(hi - lo, h.dim)
        if zlib.crc32(view) != h.crcs[b]:
            del view
            m.close()
            raise VecFileError(f"{self.path}: block {b} is damaged (checksum mismatch)")
        return m, view

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids (n,), vectors (n, dim) float16)`` of each block's live rows, in id order.

        The vectors are a view of a mapping that is closed when the iteration moves on: use (or
        copy) them before asking for the next block."""
        for b in range((self.header.rows + BLOCK - 1) // BLOCK):
            m, view = self._map_block(b)
            try:
                sl = slice(b * BLOCK, b * BLOCK + len(view))
                live = self.live_mask[sl]
                yield self.ids[sl][live], (view if live.all() else view[live])
            finally:
                del view
                try:
                    m.close()
                except BufferError:  # a caller kept a view: the map closes when it is collected
                    pass

    def rows_for(self, ids: np.ndarray) -> np.ndarray:
        """(n, dim) float32 vectors of live ``ids`` (KeyError if one is not in the file)."""
        ids = np.asarray(ids, np.int64)
        pos = np.searchsorted(self.ids, ids)
        pos = np.minimum(pos, max(len(self.ids) - 1, 0))
        if len(ids) and (len(self.ids) == 0 or not ((self.ids[pos] == ids) & self.live_mask[pos]).all()):
            raise KeyError("not in the vector file")
        out = np.empty((len(ids), self.dim), np.float32)
        row = self.dim * 2
        for k, p in enumerate(pos.tolist()):
            out[k] = np.frombuffer(_pread(self._fd, row, HEADER + p * row), dtype="<f2")
        return out


# ---------------------------------------------------------------------- header
def _ids_offset(h: VecHeader) -> int:
    return HEADER + h.capacity * h.dim * 2


def _file_size(capacity: int, dim: int) -> int:
    return HEADER + capacity * dim * 2 + capacity * 8


def _pread(fd: int, n: int, offset: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = os.pread(fd, min(n - len(out), 1 << 26), offset + len(out))
        if not chunk:
            raise ValueError("truncated")
        out += chunk
    return bytes(out)


def _read_header(fd: int, size: int, max_count: int | None) -> VecHeader:
    if size < HEADER:
        raise ValueError(f"truncated ({size} bytes)")
    raw = _pread(fd, HEADER, 0)
    if not raw.startswith(_MAGIC):
        raise ValueError("not a clipdesk vector file")
    (n,) = struct.unpack_from("<I", raw, len(_MAGIC))
    start = len(_MAGIC) + 4
    if start + n > HEADER - _DIGEST:
        raise ValueError(f"header length {n} does not fit")
    if hashlib.blake2b(raw[:HEADER - _DIGEST], digest_size=_DIGEST).digest() != raw[HEADER - _DIGEST:]:
        raise ValueError("header checksum mismatch")
    fields = json.loads(raw[start:start + n])
    if not isinstance(fields, dict) or set(fields) != set(VecHeader.__dataclass_fields__):
        raise ValueError("unexpected header fields")
    h = VecHeader(**fields)
    ints = (h.generation, h.dim, h.rows, h.live, h.capacity)
    if not all(type(v) is int and v >= 0 for v in ints) or not all(isinstance(v, str) for v in
                                                                  (h.library, h.model, h.ids_digest)):
        raise ValueError("header values of the wrong type")
    if not 1 <= h.dim <= _MAX_DIM or not h.live <= h.rows <= h.capacity <= _MAX_ROWS:
        raise ValueError("implausible sizes")
    if max_count is not None and h.live > max_count:
        raise ValueError(f"declares {h.live} vectors, more than the catalog's {max_count}")
    blocks = (h.rows + BLOCK - 1) // BLOCK
    if not isinstance(h.crcs, list) or len(h.crcs) != blocks or not all(type(c) is int for c in h.crcs):
        raise ValueError("block checksums do not match the row count")
    if size != _file_size(h.capacity, h.dim):
        raise ValueError(f"size {size} does not match the header ({_file_size(h.capacity, h.dim)})")
    return h


def _header_bytes(h: VecHeader) -> bytes:
    head = json.dumps(asdict(h)).encode()
    body = _MAGIC + struct.pack("<I", len(head)) + head
    if len(body) > HEADER - _DIGEST:
        raise VecFileError("too many rows for the header's block checksums")
    body += b"\0" * (HEADER - _DIGEST - len(body))
    return body + hashlib.blake2b(body, digest_size=_DIGEST).digest()


# ---------------------------------------------------------------------- writing
def build(path: str, chunks, dim: int, generation: int, library: str, model: str, total: int = 0) -> VecHeader:
    """Write a fresh file atomically from ``(ids, vectors)`` chunks in increasing id order."""
    capacity = max(BLOCK, int(total * 1.25))

    def write(f) -> None:
        fd = f.fileno()
        os.ftruncate(fd, _file_size(capacity, dim))  # unused capacity stays a hole (no disk)
        ids_all: list[np.ndarray] = []
        pending = np.zeros((0, dim), np.float16)
        rows, crcs, last = 0, [], -1
        f.seek(HEADER)
        for ids, vecs in chunks:
            ids = np.asarray(ids, np.int64)
            if len(ids) == 0:
                continue
            if ids[0] <= last or (len(ids) > 1 and not (np.diff(ids) > 0).all()) or ids[0] < 0:
                raise VecFileError("vectors not in increasing id order")
            last = int(ids[-1])
            vecs = np.ascontiguousarray(vecs, dtype="<f2")
            if rows + len(ids) > capacity:
                raise VecFileError("more vectors than announced")
            f.write(vecs.tobytes())
            ids_all.append(ids)
            # CRCs per BLOCK rows, whatever the chunk sizes
            pending = np.concatenate([pending, vecs]) if len(pending) else vecs
            while len(pending) >= BLOCK:
                crcs.append(zlib.crc32(pending[:BLOCK]))
                pending = pending[BLOCK:]
            rows += len(ids)
        if len(pending):
            crcs.append(zlib.crc32(np.ascontiguousarray(pending)))
        raw = np.concatenate(ids_all) if ids_all else np.zeros(0, np.int64)
        f.seek(HEADER + capacity * dim * 2)
        f.write(raw.astype("<i8").tobytes())
        header[0] = VecHeader(generation, library, model, dim, rows, rows, capacity, _blake(raw.tobytes()), crcs)
        f.seek(0)
        f.write(_header_bytes(header[0]))

    header: list[VecHeader] = [None]  # type: ignore[list-item]
    atomic_write(path, write, size=HEADER + total * dim * 2 + capacity * 8)  # the holes take no disk
    return header[0]


def sync(path: str, catalog: Catalog, model: str, library: str, dim: int, rebuild: bool = False
         ) -> tuple[str, VecHeader]:
    """Bring the file at ``path`` to the catalog's generation (writers only, under the library
    lock): patched in place when it can be, else (or with ``rebuild``) rewritten. Returns
    ``("current" | "patched" | "rebuilt", header)``."""
    gen = catalog.generation
    try:
        vf = None if rebuild else VectorFile.open(path)
    except VecFileError:
        vf = None
    if vf is not None:
        with vf:
            h = vf.header
            if h.generation == gen and h.model == model and h.library == library and h.dim == dim:
                return "current", h
            if catchable(vf, catalog, model, library, dim):
                try:
                    return "patched", _patch(vf, catalog, gen)
                except _Rewrite:
                    pass
    header = build(path, catalog.iter_vectors(chunk=BLOCK), dim, gen, library, model, catalog.vector_count())
    return "rebuilt", header


def catchable(vf: VectorFile, catalog: Catalog, model: str, library: str, dim: int) -> bool:
    """Whether the catalog still records every change since the file's generation (tombstones of
    older generations are pruned), for this library, model and dimension."""
    h = vf.header
    return (h.model == model and h.library == library and h.dim == dim
            and catalog.pruned_generation <= h.generation <= catalog.generation)


class _Rewrite(Exception):
    """The changes cannot be applied in place."""


def _patch(vf: VectorFile, catalog: Catalog, gen: int) -> VecHeader:
    h = vf.header
    deleted = catalog.deleted_since(h.generation)
    changed = list(catalog.iter_vectors(since_generation=h.generation, chunk=BLOCK))
    new_ids = np.concatenate([c[0] for c in changed]) if changed else np.zeros(0, np.int64)
    new_vecs = np.vstack([c[1] for c in changed]).astype("<f2") if changed else np.zeros((0, h.dim), "<f2")
    raw = vf.raw_ids.copy()
    ids = vf.ids
    # Deleted (or replaced) ids present in the file are marked dead first.
    gone = np.union1d(deleted, new_ids)
    pos = np.searchsorted(ids, gone)
    hit = pos < len(ids)
    hit[hit] = ids[pos[hit]] == gone[hit]
    raw[pos[hit]] = -ids[pos[hit]] - 1
    # Changed ids already in the file (dead or alive) are written over their slot; those past the
    # last slot are appended; any other is an insertion in the middle: rewrite.
    last = int(ids[-1]) if len(ids) else -1
    pos = np.searchsorted(ids, new_ids)
    inside = pos < len(ids)
    inside[inside] = ids[pos[inside]] == new_ids[inside]
    append = new_ids > last
    if not (inside | append).all():
        raise _Rewrite
    rows = h.rows + int(append.sum())
    dead = int((raw < 0).sum())
    if rows > h.capacity or dead > DEAD_LIMIT * rows + 1000:
        raise _Rewrite
    fd = os.open(vf.path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        row = h.dim * 2
        touched = set()
        slots = np.concatenate([pos[inside], np.arange(h.rows, rows)])
        vecs = np.vstack([new_vecs[inside], new_vecs[append]])
        order = np.argsort(slots, kind="stable")
        for s, v in zip(slots[order].tolist(), vecs[order]):
            os.pwrite(fd, v.tobytes(), HEADER + s * row)
            touched.add(s // BLOCK)
        raw[pos[inside]] = new_ids[inside]
        raw = np.concatenate([raw, new_ids[append]])
        crcs = list(h.crcs) + [0] * ((rows + BLOCK - 1) // BLOCK - len(h.crcs))
        for b in sorted(touched):
            lo, hi = b * BLOCK, min(rows, (b + 1) * BLOCK)
            crcs[b] = zlib.crc32(_pread(fd, (hi - lo) * row, HEADER + lo * row))
        os.pwrite(fd, raw.astype("<i8").tobytes(), _ids_offset(h))
        os.fsync(fd)
        header = VecHeader(gen, h.library, h.model, h.dim, rows, int((raw >= 0).sum()), h.capacity,
                           _blake(raw.astype("<i8").tobytes()), crcs)
        # The header goes last: a crash before it leaves data that no longer matches the old
        # header's digests, which reads as damaged and is rebuilt, never trusted.
        os.pwrite(fd, _header_bytes(header), 0)
        os.fsync(fd)
    except OSError as e:
        # Rows written into the file's holes take disk space. A patch cut short leaves data that
        # no longer matches the old header's digests: the file reads as damaged and is rebuilt.
        if is_disk_full(e):
            raise disk_full_error(os.path.dirname(os.path.abspath(vf.path)), f"write {os.path.basename(vf.path)}",
                                  len(new_ids) * h.dim * 2 + len(raw) * 8) from None
        raise
    finally:
        os.close(fd)
    return header


_F16_TO_F32 = np.float32(2.0 ** 112)  # 2^(127 - 15): the float32 exponent bias over float16's
_F16_LARGEST = 65504.0  # float16's largest finite value
_CONVERT_ROWS = 4096  # rows converted at a time: the passes stay in the CPU's cache


def as_float32(vecs: np.ndarray, buf: np.ndarray | None = None) -> np.ndarray:
    """``vecs`` (n, dim) float16 as float32, written into ``buf`` (grown as needed; returned).

    numpy's own float16 cast is a scalar loop (about 1 ns per number here: 0.9 s per million
    512-d vectors). The same conversion as three integer/float passes numpy runs vectorised is
    exact for every finite float16 and ~8x faster: the float16's sign-extended bits shifted into
    place (``<< 13``), the three bits the shift drags into a negative number's exponent cleared,
    and the value rescaled by 2^112 (which also turns float16 subnormals into the right normal
    float32). Infinity and NaN have no such mapping (they come out as ±65536 or more), so a chunk
    holding one takes numpy's cast.
    """
    n, dim = vecs.shape
    if buf is None or buf.shape[0] < n or buf.shape[1] != dim:
        buf = np.empty((max(n, 1), dim), np.float32)
    if vecs.dtype != np.float16:
        buf[:n] = vecs
        return buf
    bits = vecs.view(np.int16) if vecs.flags.c_contiguous else np.ascontiguousarray(vecs).view(np.int16)
    out = buf.view(np.int32)
    for i in range(0, n, _CONVERT_ROWS):
        j = min(n, i + _CONVERT_ROWS)
        o = out[i:j]
        np.copyto(o, bits[i:j], casting="unsafe")  # sign-extending widen
        np.left_shift(o, 13, out=o)
        np.bitwise_and(o, np.int32(-0x70000001), out=o)  # 0x8FFFFFFF: sign, exponent, mantissa
        f = buf[i:j]
        np.multiply(f, _F16_TO_F32, out=f)
        if f.size and not (-_F16_LARGEST <= f.min() and f.max() <= _F16_LARGEST):
            f[:] = vecs[i:j]  # infinity or NaN in this chunk
    return buf


# ---------------------------------------------------------------------- reading with catch-up
def overlay(vf: VectorFile, catalog: Catalog) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The catalog's changes since the file's generation: ``(dropped ids, changed ids, changed
    vectors float16)``, or None when there are too many to overlay (read the catalog instead)."""
    h = vf.header
    if h.generation == catalog.generation:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, h.dim), np.float16)
    deleted = catalog.deleted_since(h.generation)
    if len(deleted) > OVERLAY_LIMIT * h.live + 1000:
        return None
    changed = []
    n = 0
    for ids, vecs in catalog.iter_vectors(since_generation=h.generation, chunk=BLOCK):
        changed.append((ids, vecs.astype(np.float16)))
        n += len(ids)
        if n > OVERLAY_LIMIT * h.live + 1000:
            return None
    ids = np.concatenate([c[0] for c in changed]) if changed else np.zeros(0, np.int64)
    vecs = np.vstack([c[1] for c in changed]) if changed else np.zeros((0, h.dim), np.float16)
    return np.union1d(deleted, ids), ids, vecs


def chunks(vf: VectorFile, changes: tuple[np.ndarray, np.ndarray, np.ndarray]
           ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(ids, vectors float16)`` of the file with ``changes`` (see :func:`overlay`) applied, in
    increasing id order, a block at a time."""
    dropped, new_ids, new_vecs = changes
    order = np.argsort(new_ids, kind="stable")
    new_ids, new_vecs = new_ids[order], new_vecs[order]
    taken = 0
    for ids, vecs in vf.blocks():
        if len(dropped):
            keep = ~np.isin(ids, dropped, assume_unique=False)
            if not keep.all():
                ids, vecs = ids[keep], vecs[keep]
        if taken < len(new_ids) and len(ids):
            upto = int(np.searchsorted(new_ids, ids[-1], side="right"))
            if upto > taken:
                ids = np.concatenate([ids, new_ids[taken:upto]])
                vecs = np.vstack([vecs, new_vecs[taken:upto]])
                o = np.argsort(ids, kind="stable")
                ids, vecs = ids[o], vecs[o]
                taken = upto
        if len(ids):
            yield ids, vecs
    if taken < len(new_ids):
        yield new_ids[taken:], new_vecs[taken:]
