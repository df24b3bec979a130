"""The SQLite catalog: the single source of truth of a library, vectors included.

Every image row carries its embedding (float16 blob) in the same transaction as the row, so a
crash can never leave a row without its vector or the reverse. The FAISS index is a derived cache
(see ``vectors.py``): each write that changes the set of vectors bumps ``generation`` and stamps
the rows it wrote (``vgen``) or deleted (``tombstones``), so a cache saved at generation g can be
caught up cheaply by anyone who opens the library later.

Paths are stored as the file system's bytes (BLOB), so names that are not valid UTF-8 survive.
Schema versions live in ``PRAGMA user_version``; a newer catalog is refused, an older one is
migrated step by step after a backup copy is written beside it.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .errors import CatalogCorruptError, ClipdeskError, DiskFullError, SchemaVersionError, is_disk_full

SCHEMA_VERSION = 1

_SCHEMA_V1 = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE folders(path BLOB PRIMARY KEY, added REAL NOT NULL);
CREATE TABLE images(
    id INTEGER PRIMARY KEY,
    path BLOB NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT,
    width INTEGER,
    height INTEGER,
    taken REAL,            -- EXIF capture time, else the file's modification time (POSIX seconds)
    error TEXT,            -- NULL once embedded; a readable reason when the file could not be read
    vector BLOB,           -- float16 embedding; NULL exactly when error is not NULL
    vgen INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX images_hash ON images(hash);
CREATE INDEX images_vgen ON images(vgen);
CREATE TABLE tombstones(id INTEGER NOT NULL, generation INTEGER NOT NULL);
CREATE TABLE labels(name TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE label_members(
    label TEXT NOT NULL REFERENCES labels(name) ON DELETE CASCADE ON UPDATE CASCADE,
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    PRIMARY KEY(label, image_id)
);
"""

# Step migrations: _MIGRATIONS[v] upgrades a catalog at version v to v + 1.
_MIGRATIONS: dict[int, str] = {}


@dataclass(frozen=True)
class FileState:
    id: int
    size: int
    mtime_ns: int
    hash: str | None
    failed: bool


@dataclass(frozen=True)
class ImageRecord:
    """One successfully embedded file, ready to be written."""

    path: str
    size: int
    mtime_ns: int
    hash: str
    width: int
    height: int
    taken: float
    vector: np.ndarray  # (dim,) float32, L2-normalised


@dataclass(frozen=True)
class Failure:
    path: str
    reason: str
    size: int = -1
    mtime_ns: int = 0


@dataclass(frozen=True)
class ImageInfo:
    id: int
    path: str
    size: int
    width: int | None
    height: int | None
    taken: float | None
    error: str | None


def _b(path: str) -> bytes:
    return os.fsencode(path)


def _s(blob: bytes) -> str:
    return os.fsdecode(bytes(blob))


class Catalog:
    """A library's catalog. Thread-safe: one connection guarded by a lock."""

    FILENAME = "catalog.sqlite"

    def __init__(self, conn: sqlite3.Connection, path: str):
        self._conn = conn
        self.path = path
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, folder: str, create: bool = True) -> Catalog:
        path = os.path.join(folder, cls.FILENAME)
        exists = os.path.exists(path)
        if not exists and not create:
            raise FileNotFoundError(path)
        if create:
            os.makedirs(folder, exist_ok=True)
        try:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.OperationalError as e:
            if "unable to open" in str(e):
                raise ClipdeskError(f"Cannot open the catalog {path}: {e} (check the folder and its permissions).") from None
            raise CatalogCorruptError(
                f"The catalog {path} is damaged ({e}). Run 'clipdesk repair' to check it and "
                "salvage what can be read; your photos are not touched."
            ) from None
        except sqlite3.DatabaseError as e:
            raise CatalogCorruptError(
                f"The catalog {path} is damaged ({e}). Run 'clipdesk repair' to check it and "
                "salvage what can be read; your photos are not touched."
            ) from None
        catalog = cls(conn, path)
        if version == 0 and not tables:
            catalog._create()
        elif version > SCHEMA_VERSION:
            conn.close()
            raise SchemaVersionError(
                f"The catalog {path} was written by a newer clipdesk (schema {version}; this "
                f"version understands up to {SCHEMA_VERSION}). Upgrade clipdesk to open it."
            )
        elif version < SCHEMA_VERSION:
            catalog._migrate(version)
        elif "images" not in tables:
            conn.close()
            raise CatalogCorruptError(f"The catalog {path} has no images table. Run 'clipdesk repair'.")
        return catalog

    def _create(self) -> None:
        with self._lock:
            self._conn.executescript(
                "BEGIN;" + _SCHEMA_V1 + "INSERT INTO meta(key, value) VALUES ('generation', '0');"
                f"PRAGMA user_version={SCHEMA_VERSION};COMMIT;")

    def _migrate(self, version: int) -> None:
        backup = f"{self.path}.v{version}.bak"
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        shutil.copy2(self.path, backup)
        for v in range(version, SCHEMA_VERSION):
            if v not in _MIGRATIONS:
                raise SchemaVersionError(f"No migration of {self.path} from schema version {v}.")
            self._conn.executescript(
                "BEGIN;" + _MIGRATIONS[v] + f"PRAGMA user_version={v + 1};COMMIT;"
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write; rolled back on any exception (disk full included)."""
        with self._lock:
            conn = self._conn
            own = not conn.in_transaction
            if own:
                conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                if own and conn.in_transaction:
                    conn.execute("COMMIT")
            except BaseException as e:
                if own and conn.in_transaction:
                    conn.execute("ROLLBACK")
                if is_disk_full(e):
                    raise DiskFullError(
                        f"The disk holding the library is full (writing {self.path}). Everything "
                        "indexed before is kept; free some space and run the indexing again.") from None
                raise

    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as e:
                if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                    raise ClipdeskError(f"The catalog {self.path} is busy: {e}") from None
                raise CatalogCorruptError(
                    f"The catalog {self.path} cannot be read ({e}). Run 'clipdesk repair'."
                ) from None

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation", "0"))

    def _bump_generation(self, c: sqlite3.Connection) -> int:
        gen = int(c.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0]) + 1
        c.execute("UPDATE meta SET value=? WHERE key='generation'", (str(gen),))
        return gen

    # ------------------------------------------------------------------ folders
    def add_folder(self, path: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR IGNORE INTO folders(path, added) VALUES (?, ?)", (_b(path), time.time()))

    def remove_folder(self, path: str) -> list[int]:
        """Forget a folder and its images (the files on disk are not touched). Returns removed ids."""
        prefix = _b(path.rstrip(os.sep) + os.sep)
        with self.transaction() as c:
            c.execute("DELETE FROM folders WHERE path=?", (_b(path),))
            ids = [r[0] for r in c.execute(
                "SELECT id FROM images WHERE substr(path, 1, ?) = ?", (len(prefix), prefix))]
            self._delete(c, ids)
        return ids

    def folders(self) -> list[str]:
        return [_s(r[0]) for r in self._query("SELECT path FROM folders ORDER BY path")]

    # ------------------------------------------------------------------ incremental indexing
    def file_states(self) -> dict[str, FileState]:
        rows = self._query("SELECT id, path, size, mtime_ns, hash, error IS NOT NULL FROM images")
        return {_s(p): FileState(i, s, m, h, bool(f)) for i, p, s, m, h, f in rows}

    def write_batch(
        self,
        records: Sequence[ImageRecord] = (),
        failures: Sequence[Failure] = (),
        delete_ids: Sequence[int] = (),
        moves: Sequence[tuple[int, str, int, int]] = (),
    ) -> tuple[int, list[int], list[int]]:
        """Write one batch atomically: embedded images (inserted or replaced by path), failures,
        deletions and moves ``(id, new_path, size, mtime_ns)``.

        Returns ``(new generation, ids of records, ids whose old vector must leave the index)``.
        """
        ids: list[int] = []
        replaced: list[int] = []
        with self.transaction() as c:
            gen = self._bump_generation(c)
            self._delete(c, delete_ids, gen)
            for image_id, new_path, size, mtime_ns in moves:
                c.execute("UPDATE images SET path=?, size=?, mtime_ns=? WHERE id=?",
                          (_b(new_path), size, mtime_ns, image_id))
            for r in records:
                blob = np.asarray(r.vector, dtype=np.float16).tobytes()
                row = c.execute("SELECT id, error IS NULL FROM images WHERE path=?", (_b(r.path),)).fetchone()
                values = (r.size, r.mtime_ns, r.hash, r.width, r.height, r.taken, blob, gen)
                if row is None:
                    cur = c.execute(
                        "INSERT INTO images(size, mtime_ns, hash, width, height, taken, vector, vgen, path)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (*values, _b(r.path)))
                    ids.append(int(cur.lastrowid))
                else:
                    c.execute(
                        "UPDATE images SET size=?, mtime_ns=?, hash=?, width=?, height=?, taken=?,"
                        " vector=?, vgen=?, error=NULL WHERE id=?", (*values, row[0]))
                    ids.append(row[0])
                    if row[1]:
                        replaced.append(row[0])
            for f in failures:
                row = c.execute("SELECT id, error IS NULL FROM images WHERE path=?", (_b(f.path),)).fetchone()
                if row is None:
                    c.execute("INSERT INTO images(path, size, mtime_ns, error, vgen) VALUES (?, ?, ?, ?, ?)",
                              (_b(f.path), f.size, f.mtime_ns, f.reason, gen))
                else:
                    c.execute("UPDATE images SET size=?, mtime_ns=?, error=?, vector=NULL, vgen=? WHERE id=?",
                              (f.size, f.mtime_ns, f.reason, gen, row[0]))
                    if row[1]:
                        replaced.append(row[0])
                        c.execute("INSERT INTO tombstones(id, generation) VALUES (?, ?)", (row[0], gen))
        return gen, ids, replaced

    def _delete(self, c: sqlite3.Connection, ids: Iterable[int], gen: int | None = None) -> None:
        ids = list(ids)
        if not ids:
            return
        if gen is None:
            gen = self._bump_generation(c)
        c.executemany("DELETE FROM images WHERE id=?", [(i,) for i in ids])
        c.executemany("INSERT INTO tombstones(id, generation) VALUES (?, ?)", [(i, gen) for i in ids])

    def delete_images(self, ids: Sequence[int]) -> None:
        with self.transaction() as c:
            self._delete(c, ids)

    def clear_vectors(self) -> None:
        """Forget every embedding (for re-embedding with another model); rows and labels stay."""
        with self.transaction() as c:
            gen = self._bump_generation(c)
            c.execute("INSERT INTO tombstones(id, generation) SELECT id, ? FROM images WHERE vector IS NOT NULL", (gen,))
            c.execute("UPDATE images SET vector=NULL, size=-1, vgen=? WHERE vector IS NOT NULL", (gen,))

    # ------------------------------------------------------------------ vectors
    def vector_count(self) -> int:
        return self._query("SELECT count(*) FROM images WHERE vector IS NOT NULL")[0][0]

    def iter_vectors(self, since_generation: int = 0, chunk: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids (n,) int64, vectors (n, dim) float32)`` of rows written after a generation."""
        for ids, _paths, vecs in self._vector_chunks(since_generation, chunk, with_paths=False):
            yield ids, vecs

    def iter_embedded(self, chunk: int = 50_000) -> Iterator[tuple[np.ndarray, list[str], np.ndarray]]:
        """Yield ``(ids, paths, vectors (n, dim) float32)`` of every embedded image, in id order,
        in one pass over the table (for applying a classifier to the whole library)."""
        yield from self._vector_chunks(0, chunk, with_paths=True)

    def _vector_chunks(self, since_generation: int, chunk: int, with_paths: bool):
        cols = "id, vector, path" if with_paths else "id, vector"
        last = -1
        while True:
            rows = self._query(
                f"SELECT {cols} FROM images WHERE vector IS NOT NULL AND vgen > ? AND id > ?"
                " ORDER BY id LIMIT ?", (since_generation, last, chunk))
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float16).reshape(len(rows), -1)
            yield ids, [_s(r[2]) for r in rows] if with_paths else None, vecs.astype(np.float32)
            last = int(ids[-1])

    def deleted_since(self, generation: int) -> np.ndarray:
        rows = self._query("SELECT DISTINCT id FROM tombstones WHERE generation > ?", (generation,))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def prune_tombstones(self, up_to_generation: int) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM tombstones WHERE generation <= ?", (up_to_generation,))

    def vectors_for(self, ids: Sequence[int]) -> np.ndarray:
        """(n, dim) float32 vectors of the given ids, in that order (KeyError if one has none)."""
        found = {}
        for chunk in _chunks(list(ids), 900):
            q = ",".join("?" * len(chunk))
            for i, v in self._query(f"SELECT id, vector FROM images WHERE vector IS NOT NULL AND id IN ({q})", chunk):
                found[i] = v
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(missing)
        if not ids:
            return np.zeros((0, 0), np.float32)
        return np.stack([np.frombuffer(found[i], dtype=np.float16) for i in ids]).astype(np.float32)

    # ------------------------------------------------------------------ lookups
    def id_for_path(self, path: str) -> int | None:
        rows = self._query("SELECT id FROM images WHERE path=? AND vector IS NOT NULL", (_b(path),))
        return rows[0][0] if rows else None

    def images(self, ids: Sequence[int]) -> dict[int, ImageInfo]:
        out = {}
        for chunk in _chunks(list(ids), 900):
            q = ",".join("?" * len(chunk))
            for r in self._query(
                    f"SELECT id, path, size, width, height, taken, error FROM images WHERE id IN ({q})", chunk):
                out[r[0]] = ImageInfo(r[0], _s(r[1]), *r[2:])
        return out

    def all_images(self) -> list[ImageInfo]:
        rows = self._query("SELECT id, path, size, width, height, taken, error FROM images"
                           " WHERE vector IS NOT NULL ORDER BY path")
        return [ImageInfo(r[0], _s(r[1]), *r[2:]) for r in rows]

    def filter_ids(self, folder: str | None = None, after: float | None = None,
                   before: float | None = None) -> np.ndarray:
        """Ids of embedded images under ``folder`` and taken within ``[after, before)``."""
        sql, params = "SELECT id FROM images WHERE vector IS NOT NULL", []
        if folder:
            prefix = _b(folder.rstrip(os.sep) + os.sep)
            sql += " AND substr(path, 1, ?) = ?"
            params += [len(prefix), prefix]
        if after is not None:
            sql += " AND taken >= ?"
            params.append(after)
        if before is not None:
            sql += " AND taken < ?"
            params.append(before)
        return np.array([r[0] for r in self._query(sql, params)], dtype=np.int64)

    def failures(self) -> list[tuple[str, str]]:
        return [(_s(p), e) for p, e in self._query(
            "SELECT path, error FROM images WHERE error IS NOT NULL ORDER BY path")]

    def counts(self) -> tuple[int, int]:
        """(embedded images, failed files)."""
        row = self._query("SELECT count(vector), count(error) FROM images")[0]
        return int(row[0]), int(row[1])

    # ------------------------------------------------------------------ labels
    def create_label(self, name: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR IGNORE INTO labels(name, created) VALUES (?, ?)", (name, time.time()))

    def delete_label(self, name: str) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM labels WHERE name=?", (name,))

    def rename_label(self, old: str, new: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE labels SET name=? WHERE name=?", (new, old))

    def add_to_label(self, name: str, ids: Iterable[int]) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR IGNORE INTO labels(name, created) VALUES (?, ?)", (name, time.time()))
            c.executemany("INSERT OR IGNORE INTO label_members(label, image_id) VALUES (?, ?)",
                          [(name, i) for i in ids])

    def remove_from_label(self, name: str, ids: Iterable[int]) -> None:
        with self.transaction() as c:
            c.executemany("DELETE FROM label_members WHERE label=? AND image_id=?", [(name, i) for i in ids])

    def labels(self) -> dict[str, list[int]]:
        """Every label with its member image ids (labels may be empty)."""
        out: dict[str, list[int]] = {r[0]: [] for r in self._query("SELECT name FROM labels ORDER BY name")}
        for name, image_id in self._query(
                "SELECT m.label, m.image_id FROM label_members m JOIN images i ON i.id = m.image_id"
                " WHERE i.vector IS NOT NULL ORDER BY m.label, m.image_id"):
            out[name].append(image_id)
        return out


def integrity_problems(path: str) -> list[str]:
    """``PRAGMA integrity_check`` of a catalog file: an empty list when it is sound."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        return [str(e)]
    return [] if rows == ["ok"] else rows


def salvage(damaged: str, target_folder: str) -> dict[str, int]:
    """Copy every readable row of a damaged catalog into a fresh one at ``target_folder``.

    Rows are read one table at a time and, where a table cannot be scanned as a whole, by rowid
    ranges, so one bad page loses only the rows on it. Returns rows recovered per table.
    """
    fresh = Catalog.open(target_folder)
    recovered = {}
    try:
        src = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)
        src.execute("SELECT name FROM sqlite_master").fetchall()
    except sqlite3.DatabaseError:
        fresh.close()
        return {}  # not a database at all: a fresh, empty catalog
    tables = {"meta": "key, value", "folders": "path, added",
              "images": "id, path, size, mtime_ns, hash, width, height, taken, error, vector, vgen",
              "labels": "name, created", "label_members": "label, image_id"}
    try:
        for table, cols in tables.items():
            rows = _readable_rows(src, table, cols)
            with fresh.transaction() as c:
                if table == "meta":
                    c.execute("DELETE FROM meta")
                marks = ",".join("?" * len(cols.split(",")))
                for row in rows:
                    try:
                        c.execute(f"INSERT OR IGNORE INTO {table}({cols}) VALUES ({marks})", row)
                    except sqlite3.DatabaseError:
                        continue
                if table == "meta" and not c.execute("SELECT 1 FROM meta WHERE key='generation'").fetchone():
                    c.execute("INSERT INTO meta(key, value) VALUES ('generation', '1')")
            recovered[table] = len(rows)
        with fresh.transaction() as c:  # every vector is new to whatever index existed before
            gen = fresh._bump_generation(c)
            c.execute("UPDATE images SET vgen=?", (gen,))
            c.execute("DELETE FROM label_members WHERE image_id NOT IN (SELECT id FROM images)"
                      " OR label NOT IN (SELECT name FROM labels)")
    finally:
        src.close()
        fresh.close()
    return recovered


def _readable_rows(src: sqlite3.Connection, table: str, cols: str) -> list[tuple]:
    try:
        return src.execute(f"SELECT {cols} FROM {table}").fetchall()
    except sqlite3.DatabaseError:
        pass
    rows: list[tuple] = []
    try:
        hi = src.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
    except sqlite3.DatabaseError:
        return rows  # not even the table's extent is readable: nothing to salvage from it
    step = 256
    for lo in range(0, hi + 1, step):
        try:
            rows += src.execute(f"SELECT {cols} FROM {table} WHERE rowid >= ? AND rowid < ?", (lo, lo + step)).fetchall()
        except sqlite3.DatabaseError:
            for r in range(lo, lo + step):
                try:
                    rows += src.execute(f"SELECT {cols} FROM {table} WHERE rowid = ?", (r,)).fetchall()
                except sqlite3.DatabaseError:
                    continue
    return rows


def _chunks(seq: list, n: int) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]
