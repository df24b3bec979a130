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

import gc
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .exif import sane_timestamp
from .errors import (CatalogCorruptError, ClipdeskError, DiskFullError, FolderNotInLibraryError,
                     LibraryReadOnlyError, SchemaVersionError, disk_full_error, is_disk_full)
from .files import check_library_entry, folder_writable, is_read_only_error
from .scan import canonical_path, fold_int64, is_inside

SCHEMA_VERSION = 3

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

# Step migrations: _MIGRATIONS[v] (one statement) upgrades a catalog at version v to v + 1. A new
# catalog is version 1 plus every migration.
_MIGRATIONS: dict[int, str] = {
    # 2: the file's inode number, so two identical files moved together keep their own rows.
    1: "ALTER TABLE images ADD COLUMN ino INTEGER NOT NULL DEFAULT 0",
    # 3: a membership given *because the probe was wrong* (a photo put in bucket B while the
    # applied probe said A): the probe keeps such corrections out of its estimate of how far to
    # trust the text (clipdesk.teach.probe, "Corrections").
    2: "ALTER TABLE label_members ADD COLUMN corrected INTEGER NOT NULL DEFAULT 0",
}
# A vector column read so that an oversized (hostile) or non-blob value comes back as None,
# never loaded: SQLite knows a blob's length without reading it.
_VECTOR = "CASE WHEN typeof(vector) = 'blob' AND length(vector) <= 131072 THEN vector END"
_LIVE_INDEX = "CREATE INDEX IF NOT EXISTS images_live ON images(id, path) WHERE vector IS NOT NULL"
_FAILED_INDEX = "CREATE INDEX IF NOT EXISTS images_failed ON images(id) WHERE error IS NOT NULL"
# SQLite's files beside the database; it follows a symbolic link at any of these names.
_SIDE_FILES = ("-wal", "-shm", "-journal")


def _ro_uri(path: str, immutable: bool = False) -> str:
    return f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro" + ("&immutable=1" if immutable else "")


def _connect_read_only(path: str) -> tuple[sqlite3.Connection, str | None]:
    """A read-only connection to a catalog on read-only storage: ``(connection, copy folder)``.

    SQLite reads a WAL database in place only when its ``-wal`` and ``-shm`` files exist. Without
    a ``-wal`` the database file holds everything and is opened ``immutable`` (no shared memory
    needed). A ``-wal`` without its ``-shm`` (copied without it) holds rows the database file does
    not: the two are copied to a private temporary folder and read there, rather than ignored.
    """
    wal = path + "-wal"
    has_wal = os.path.exists(wal) and os.path.getsize(wal) > 0
    if not has_wal:
        return sqlite3.connect(_ro_uri(path, immutable=True), uri=True, check_same_thread=False,
                               isolation_level=None), None
    try:
        conn = sqlite3.connect(_ro_uri(path), uri=True, check_same_thread=False, isolation_level=None)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn, None
    except sqlite3.OperationalError:
        pass
    copy_dir = tempfile.mkdtemp(prefix="clipdesk-readonly-")
    try:
        copy = os.path.join(copy_dir, os.path.basename(path))
        shutil.copyfile(path, copy)
        shutil.copyfile(wal, copy + "-wal")
        conn = sqlite3.connect(copy, check_same_thread=False, isolation_level=None)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # replays the WAL into the copy
    except BaseException:
        shutil.rmtree(copy_dir, ignore_errors=True)
        raise
    return conn, copy_dir


@dataclass(frozen=True)
class FileState:
    id: int
    size: int
    mtime_ns: int
    hash: str | None
    failed: bool
    ino: int = 0  # 0: unknown


@dataclass(frozen=True)
class ImageRecord:
    """One successfully embedded file, ready to be written."""

    path: str
    size: int
    mtime_ns: int
    hash: str
    width: int
    height: int
    taken: float | None
    vector: np.ndarray  # (dim,) float32, L2-normalised
    ino: int = 0


@dataclass(frozen=True)
class Failure:
    path: str
    reason: str
    size: int = -1
    mtime_ns: int = 0
    ino: int = 0


@dataclass(frozen=True)
class ImageInfo:
    id: int
    path: str
    size: int
    width: int | None
    height: int | None
    taken: float | None
    error: str | None


_FS_ENCODING = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())  # what os.fsdecode uses


def _b(path: str) -> bytes:
    return os.fsencode(path)


def _s(blob: bytes | str) -> str:
    return blob if isinstance(blob, str) else os.fsdecode(bytes(blob))  # a hand-edited row may hold text


def _full(folder: str, what: str, needed: int | None = None) -> DiskFullError:
    return disk_full_error(folder, what, needed, "Everything saved before is kept; free some space and try "
                                                 "again: it goes on where it stopped.")


def _batch_bytes(records: Sequence[ImageRecord], failures: Sequence[Failure]) -> int:
    """About what one batch takes on disk: each row (its vector, path and columns, ~100 bytes,
    with its index entries) is written twice, to the WAL and then to the database."""
    rows = sum(r.vector.size * 2 + len(_b(r.path)) * 3 + 150 for r in records)
    rows += sum(len(_b(f.path)) * 3 + len(f.reason) + 150 for f in failures)
    return 2 * rows


class Catalog:
    """A library's catalog. Thread-safe: one connection guarded by a lock."""

    FILENAME = "catalog.sqlite"

    def __init__(self, conn: sqlite3.Connection, path: str, read_only: bool = False,
                 copy_dir: str | None = None):
        self._conn = conn
        self.path = path
        # On read-only storage nothing is written (no WAL index, no checkpoint, no migration).
        self.read_only = read_only
        self._copy_dir = copy_dir  # a private copy of a catalog whose WAL could not be read in place
        self.version = SCHEMA_VERSION
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, folder: str, create: bool = True) -> Catalog:
        """Open (or create) the catalog of the library at ``folder``.

        The catalog and its SQLite side files must be regular files, never symbolic links (SQLite
        would follow one and create or write its target outside the library). On read-only
        storage the catalog opens read-only (see :attr:`read_only`): readers work, writes raise
        :class:`LibraryReadOnlyError`.
        """
        path = os.path.join(folder, cls.FILENAME)
        if create:
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as e:
                if is_read_only_error(e):
                    raise LibraryReadOnlyError(
                        f"Cannot create the library {folder}: the location is read-only.") from None
                raise
        exists = check_library_entry(path)
        for suffix in _SIDE_FILES:
            check_library_entry(path + suffix)
        if not exists and not create:
            raise FileNotFoundError(path)
        read_only = os.path.isdir(folder) and not (folder_writable(folder)
                                                   and (not exists or os.access(path, os.W_OK)))
        if read_only and not exists:
            raise LibraryReadOnlyError(f"Cannot create a library in {folder}: the folder is read-only.")
        copy_dir = None
        try:
            if read_only:
                conn, copy_dir = _connect_read_only(path)
            else:
                conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as e:
            if is_disk_full(e, folder):
                raise _full(folder, "open the catalog") from None
            if not isinstance(e, sqlite3.OperationalError):
                raise CatalogCorruptError(
                    f"The catalog {path} is damaged ({e}). Run 'clipdesk repair' to check it and "
                    "salvage what can be read; your photos are not touched."
                ) from None
            if "unable to open" in str(e):
                raise ClipdeskError(f"Cannot open the catalog {path}: {e} (check the folder and its permissions).") from None
            if "readonly" in str(e) or "read-only" in str(e):
                raise LibraryReadOnlyError(f"The library {folder} is read-only and its catalog cannot be "
                                           f"opened for writing ({e}).") from None
            raise CatalogCorruptError(
                f"The catalog {path} is damaged ({e}). Run 'clipdesk repair' to check it and "
                "salvage what can be read; your photos are not touched."
            ) from None
        catalog = cls(conn, path, read_only=read_only, copy_dir=copy_dir)
        if version == 0 and not tables:
            if read_only:
                conn.close()
                raise LibraryReadOnlyError(f"The library {folder} is read-only and its catalog is empty.")
            try:
                catalog._create()
            except sqlite3.Error as e:
                conn.close()
                if is_disk_full(e, folder):
                    raise _full(folder, "create the catalog") from None
                raise
        elif version > SCHEMA_VERSION:
            conn.close()
            raise SchemaVersionError(
                f"The catalog {path} was written by a newer clipdesk (schema {version}; this "
                f"version understands up to {SCHEMA_VERSION}). Upgrade clipdesk to open it."
            )
        elif version < SCHEMA_VERSION:
            if read_only:  # readers need nothing the migrations add; writers cannot write anyway
                catalog.version = version
            else:
                try:
                    catalog._migrate(version)
                except (sqlite3.Error, OSError) as e:
                    conn.close()
                    if is_disk_full(e, folder):
                        raise _full(folder, f"upgrade the catalog (schema {version} to {SCHEMA_VERSION})") from None
                    raise
        elif "images" not in tables:
            conn.close()
            raise CatalogCorruptError(f"The catalog {path} has no images table. Run 'clipdesk repair'.")
        if not read_only:
            catalog._ensure_indexes()
        return catalog

    def _ensure_indexes(self) -> None:
        """Indexes that only speed reads up; older versions of clipdesk read and keep them too, so
        they need no schema version. ``images_live``: the embedded rows' ids and paths, so a
        whole-library pass reads 50 MB per million photos instead of every row with its vector.
        ``images_failed``: the files that failed, so the status line's counts read two indexes
        (0.05 s at a million photos) instead of the whole table (0.45 s, on the GUI thread)."""
        for name, sql in (("images_live", _LIVE_INDEX), ("images_failed", _FAILED_INDEX)):
            try:
                if not self._conn.execute("SELECT 1 FROM sqlite_master WHERE type='index' AND name=?",
                                          (name,)).fetchone():
                    with self.transaction() as c:
                        c.execute(sql)
            except sqlite3.OperationalError:
                pass  # busy (another process creating it) or read-only: reads work without it

    def _create(self) -> None:
        with self._lock:
            self._conn.executescript(
                "BEGIN;" + _SCHEMA_V1 + "".join(_MIGRATIONS[v] + ";" for v in range(1, SCHEMA_VERSION))
                + "INSERT INTO meta(key, value) VALUES ('generation', '0');"
                f"PRAGMA user_version={SCHEMA_VERSION};COMMIT;")

    def _migrate(self, version: int) -> None:
        backup = f"{self.path}.v{version}.bak"
        check_library_entry(backup)  # a link planted there would make the copy write outside
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        shutil.copy2(self.path, backup)
        for v in range(version, SCHEMA_VERSION):
            if v not in _MIGRATIONS:
                raise SchemaVersionError(f"No migration of {self.path} from schema version {v}.")
            with self.transaction() as c:
                # Another process opening the same catalog may have migrated it meanwhile.
                if c.execute("PRAGMA user_version").fetchone()[0] == v:
                    c.execute(_MIGRATIONS[v])
                    c.execute(f"PRAGMA user_version={v + 1}")

    def checkpoint(self) -> None:
        """Copy the WAL into the database file and empty it, so that the file alone holds the
        catalog (:class:`DiskFullError` when the disk cannot take it)."""
        folder = os.path.dirname(self.path)
        with self._lock:
            try:
                busy = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error as e:
                if is_disk_full(e, folder):
                    raise _full(folder, "write the catalog") from None
                raise
        if busy:
            raise ClipdeskError(f"The catalog {self.path} is busy: its changes could not all be written into it.")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            if self._copy_dir:
                shutil.rmtree(self._copy_dir, ignore_errors=True)
                self._copy_dir = None

    @contextmanager
    def transaction(self, needed: int | None = None) -> Iterator[sqlite3.Connection]:
        """One atomic write; rolled back on any exception (disk full included: then
        :class:`DiskFullError`, saying ``needed`` bytes when the caller knows them)."""
        if self.read_only:
            raise LibraryReadOnlyError(self._read_only_message())
        with self._lock:
            conn = self._conn
            own = not conn.in_transaction
            try:
                if own:
                    conn.execute("BEGIN IMMEDIATE")
                yield conn
                if own and conn.in_transaction:
                    conn.execute("COMMIT")
            except BaseException as e:
                if own and conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # SQLite rolls back itself after an I/O error; the first error is the news
                if is_disk_full(e, os.path.dirname(self.path)):
                    raise _full(os.path.dirname(self.path), "write the catalog", needed) from None
                if isinstance(e, sqlite3.OperationalError) and "readonly" in str(e):
                    raise LibraryReadOnlyError(self._read_only_message()) from None
                raise

    def _read_only_message(self) -> str:
        return (f"The library {os.path.dirname(self.path)} is read-only (read-only storage or "
                "permissions): searching works, changes cannot be saved. Copy it to writable "
                "storage to change it.")

    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as e:
                if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                    raise ClipdeskError(f"The catalog {self.path} is busy: {e}") from None
                if is_disk_full(e, os.path.dirname(self.path)):  # a reader may need WAL index space
                    raise _full(os.path.dirname(self.path), "read the catalog") from None
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
    def add_folder(self, path: str) -> str:
        """Register a folder under its canonical path (symbolic links resolved) and return the
        registered path. A folder already registered under another path to the same place (a
        link, an older non-canonical entry) is that folder: the same photos never get two rows."""
        known = self.find_folder(path)
        if known is not None:
            return known
        real = os.path.realpath(path)
        with self.transaction() as c:
            c.execute("INSERT OR IGNORE INTO folders(path, added) VALUES (?, ?)", (_b(real), time.time()))
        return real

    def find_folder(self, path: str) -> str | None:
        """The registered folder that ``path`` names (same path, or the same place through links)."""
        folders = self.folders()
        if path in folders:
            return path
        real = os.path.realpath(path)
        for f in folders:
            if f == real or os.path.realpath(f) == real:
                return f
        return None

    def canonicalise_folders(self) -> list[int]:
        """Re-register folders stored under a path through a symbolic link by their real path,
        moving their rows along. A photo that has a row under both paths (libraries from before
        folders were canonical) keeps one row, with the labels of both. Returns removed ids."""
        changes = []
        for f in self.folders():
            real = os.path.realpath(f)
            if real != f and os.path.isdir(real):  # a dangling link (drive unplugged) waits
                changes.append((f, real))
        removed: list[int] = []
        if not changes:
            return removed
        with self.transaction() as c:
            for alias, real in changes:
                prefix = _b(alias.rstrip(os.sep) + os.sep)
                rows = c.execute("SELECT id, path FROM images WHERE substr(path, 1, ?) = ?",
                                 (len(prefix), prefix)).fetchall()
                for image_id, p in rows:
                    new = _b(real + _s(p)[len(alias):])
                    twin = c.execute("SELECT id FROM images WHERE path=?", (new,)).fetchone()
                    if twin is None:
                        c.execute("UPDATE images SET path=? WHERE id=?", (new, image_id))
                        continue
                    c.execute("INSERT OR IGNORE INTO label_members(label, image_id, corrected)"
                              " SELECT label, ?, corrected FROM label_members WHERE image_id=?",
                              (twin[0], image_id))
                    removed.append(image_id)
                c.execute("DELETE FROM folders WHERE path=?", (_b(alias),))
                c.execute("INSERT OR IGNORE INTO folders(path, added) VALUES (?, ?)", (_b(real), time.time()))
            self._delete(c, removed)
        return removed

    def remove_folder(self, path: str) -> list[int]:
        """Forget a library folder and the images no other library folder covers (the files on disk
        are not touched). Returns removed ids.

        ``path`` must name one of :meth:`folders` (directly or through a symbolic link); anything
        else, a prefix such as ``/`` included, raises :class:`FolderNotInLibraryError` and forgets
        nothing.
        """
        folder = self.find_folder(path)
        if folder is None:
            listed = ", ".join(self.folders()) or "none yet"
            raise FolderNotInLibraryError(
                f"{path} is not a folder of this library, so nothing was removed. The library's "
                f"folders are: {listed}.")
        others = [f for f in self.folders() if f != folder]
        prefix = _b(folder.rstrip(os.sep) + os.sep)
        with self.transaction() as c:
            c.execute("DELETE FROM folders WHERE path=?", (_b(folder),))
            # Photos another folder still covers (an outer or an inner one) stay, labels and all.
            ids = [i for i, p in c.execute("SELECT id, path FROM images WHERE substr(path, 1, ?) = ?",
                                           (len(prefix), prefix))
                   if not any(is_inside(_s(p), o) for o in others)]
            self._delete(c, ids)
        return ids

    def folders(self) -> list[str]:
        return [_s(r[0]) for r in self._query("SELECT path FROM folders ORDER BY path")]

    # ------------------------------------------------------------------ incremental indexing
    def file_states(self) -> dict[str, FileState]:
        ino = "ino" if self.version >= 2 else "0"
        rows = self._query(f"SELECT id, path, size, mtime_ns, hash, error IS NOT NULL, {ino} FROM images")
        return {_s(p): FileState(i, s, m, h, bool(f), n or 0) for i, p, s, m, h, f, n in rows}

    def write_batch(
        self,
        records: Sequence[ImageRecord] = (),
        failures: Sequence[Failure] = (),
        delete_ids: Sequence[int] = (),
        moves: Sequence[tuple[int, str, int, int]] = (),
    ) -> tuple[int, list[int], list[int]]:
        """Write one batch atomically: embedded images (inserted or replaced by path), failures,
        deletions and moves ``(id, new_path, size, mtime_ns[, ino])``.

        Returns ``(new generation, ids of records, ids whose old vector must leave the index)``.
        """
        ids: list[int] = []
        replaced: list[int] = []
        with self.transaction(needed=_batch_bytes(records, failures)) as c:
            gen = self._bump_generation(c)
            self._delete(c, delete_ids, gen)
            for image_id, new_path, size, mtime_ns, *ino in moves:
                c.execute("UPDATE images SET path=?, size=?, mtime_ns=?, ino=? WHERE id=?",
                          (_b(new_path), size, fold_int64(mtime_ns), fold_int64(ino[0] if ino else 0), image_id))
            for r in records:
                blob = np.asarray(r.vector, dtype=np.float16).tobytes()
                row = c.execute("SELECT id, error IS NULL FROM images WHERE path=?", (_b(r.path),)).fetchone()
                values = (r.size, fold_int64(r.mtime_ns), r.hash, r.width, r.height, sane_timestamp(r.taken),
                          blob, gen, fold_int64(r.ino))
                if row is None:
                    cur = c.execute(
                        "INSERT INTO images(size, mtime_ns, hash, width, height, taken, vector, vgen, ino, path)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*values, _b(r.path)))
                    ids.append(int(cur.lastrowid))
                else:
                    c.execute(
                        "UPDATE images SET size=?, mtime_ns=?, hash=?, width=?, height=?, taken=?,"
                        " vector=?, vgen=?, ino=?, error=NULL WHERE id=?", (*values, row[0]))
                    ids.append(row[0])
                    if row[1]:
                        replaced.append(row[0])
            for f in failures:
                row = c.execute("SELECT id, error IS NULL FROM images WHERE path=?", (_b(f.path),)).fetchone()
                if row is None:
                    c.execute("INSERT INTO images(path, size, mtime_ns, error, vgen) VALUES (?, ?, ?, ?, ?)",
                              (_b(f.path), f.size, fold_int64(f.mtime_ns), f.reason, gen))
                else:
                    c.execute("UPDATE images SET size=?, mtime_ns=?, error=?, vector=NULL, vgen=? WHERE id=?",
                              (f.size, fold_int64(f.mtime_ns), f.reason, gen, row[0]))
                    if row[1]:
                        replaced.append(row[0])
                        c.execute("INSERT INTO tombstones(id, generation) VALUES (?, ?)", (row[0], gen))
        return gen, ids, replaced

    def set_inodes(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Record the inode numbers ``(id, ino)`` of unchanged files (vectors are untouched)."""
        with self.transaction() as c:
            c.executemany("UPDATE images SET ino=? WHERE id=?", [(fold_int64(n), i) for i, n in pairs])

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

    def has_vectors(self) -> bool:
        """Whether any image is embedded (one row read; a count costs 0.6 s at 5M photos)."""
        return bool(self._query("SELECT 1 FROM images WHERE vector IS NOT NULL LIMIT 1"))

    def vector_bound(self) -> int:
        """The most vectors an honest vector cache can hold: today's, plus those deleted since
        the oldest generation still recorded (a cache may lag behind the catalog)."""
        return int(self._query("SELECT (SELECT count(*) FROM images WHERE vector IS NOT NULL)"
                               " + (SELECT count(*) FROM tombstones)")[0][0])

    def iter_vectors(self, since_generation: int = 0, chunk: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids (n,) int64, vectors (n, dim) float32)`` of rows written after a generation."""
        for ids, _paths, vecs in self._vector_chunks(since_generation, chunk, with_paths=False):
            yield ids, vecs

    def iter_embedded(self, chunk: int = 50_000, after: int = -1) -> Iterator[tuple[np.ndarray, list[str], np.ndarray]]:
        """Yield ``(ids, paths, vectors (n, dim) float32)`` of every embedded image with an id
        above ``after``, in id order, in one pass over the table (for applying a classifier to the
        whole library)."""
        yield from self._vector_chunks(0, chunk, with_paths=True, after=after)

    def _vector_chunks(self, since_generation: int, chunk: int, with_paths: bool, after: int = -1):
        cols = f"id, {_VECTOR}, path" if with_paths else f"id, {_VECTOR}"
        last = after
        while True:
            rows = self._query(
                f"SELECT {cols} FROM images WHERE vector IS NOT NULL AND vgen > ? AND id > ?"
                " ORDER BY id LIMIT ?", (since_generation, last, chunk))
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            self._check_blobs(r[1] for r in rows)
            vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float16).reshape(len(rows), -1)
            yield ids, [_s(r[2]) for r in rows] if with_paths else None, vecs.astype(np.float32)
            last = int(ids[-1])

    def _check_blobs(self, blobs: Iterable[bytes]) -> None:
        """Every vector blob must be float16 and of one length (the catalog is untrusted input;
        ``_VECTOR`` reads an oversized or non-blob value as None, without loading it)."""
        lengths = {-1 if b is None else len(b) for b in blobs}
        if len(lengths) > 1 or any(n <= 0 or n % 2 for n in lengths):
            raise CatalogCorruptError(
                f"The catalog {self.path} holds vectors of different sizes {sorted(lengths)[:4]} (damaged). "
                "Run 'clipdesk repair', then 'clipdesk index'.")

    def deleted_since(self, generation: int) -> np.ndarray:
        rows = self._query("SELECT DISTINCT id FROM tombstones WHERE generation > ?", (generation,))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def prune_tombstones(self, up_to_generation: int) -> None:
        """Forget deletions up to a generation; a cache older than that cannot be caught up any
        more (see :attr:`pruned_generation`)."""
        with self.transaction() as c:
            c.execute("DELETE FROM tombstones WHERE generation <= ?", (up_to_generation,))
            c.execute("INSERT INTO meta(key, value) VALUES ('pruned_generation', ?) ON CONFLICT(key)"
                      " DO UPDATE SET value = max(CAST(value AS INTEGER), excluded.value)", (str(up_to_generation),))

    @property
    def pruned_generation(self) -> int:
        """Deletions up to this generation are no longer recorded (0: none were pruned)."""
        try:
            return int(self.get_meta("pruned_generation", "0"))
        except ValueError:
            return self.generation  # unreadable: trust no cache older than now

    def library_id(self, create: bool = False) -> str | None:
        """A random id of this catalog, stamped on derived files so that one copied from another
        library is not taken for this one's (None until a writer creates it)."""
        lid = self.get_meta("library_id")
        if lid is None and create:
            import uuid

            lid = uuid.uuid4().hex
            with self.transaction() as c:
                c.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('library_id', ?)", (lid,))
            lid = self.get_meta("library_id")
        return lid

    def live_paths(self, lo: int, hi: int) -> tuple[np.ndarray, list[str]]:
        """``(ids, paths)`` of the embedded images with ids in ``[lo, hi]``, in id order (read from
        the ``images_live`` index: no vector is loaded)."""
        # A chunk is tens of thousands of new tuples and strings and no reference cycle: with the
        # cyclic collector on, creating them sets off collections that scan every object of the
        # process (seconds per million rows once torch's objects are loaded, measured).
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._live_paths(lo, hi)
        finally:
            if collecting:
                gc.enable()

    def _live_paths(self, lo: int, hi: int) -> tuple[np.ndarray, list[str]]:
        rows = self._query("SELECT id, path FROM images WHERE vector IS NOT NULL AND id >= ? AND id <= ?"
                           " ORDER BY id", (lo, hi))
        if not rows:
            return np.zeros(0, np.int64), []
        ids, raw = zip(*rows)  # columns without a Python-level loop per row
        if set(map(type, raw)) == {bytes}:
            # One decode for the whole chunk (paths never hold a NUL byte): 1M fsdecode calls cost seconds.
            paths = b"\0".join(raw).decode(*_FS_ENCODING).split("\0")
        else:
            paths = [_s(r) for r in raw]
        return np.array(ids, np.int64), paths

    def vectors_for(self, ids: Sequence[int]) -> np.ndarray:
        """(n, dim) float32 vectors of the given ids, in that order (KeyError if one has none)."""
        found = {}
        for chunk in _chunks(list(ids), 900):
            q = ",".join("?" * len(chunk))
            for i, v in self._query(f"SELECT id, {_VECTOR} FROM images WHERE vector IS NOT NULL AND id IN ({q})",
                                    chunk):
                found[i] = v
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(missing)
        if not ids:
            return np.zeros((0, 0), np.float32)
        self._check_blobs(found.values())
        return np.stack([np.frombuffer(found[i], dtype=np.float16) for i in ids]).astype(np.float32)

    # ------------------------------------------------------------------ lookups
    def id_for_path(self, path: str) -> int | None:
        """The id of the embedded image at ``path``, also when ``path`` reaches it through a
        symbolic link to its folder (folders are stored by their real path)."""
        for p in dict.fromkeys((path, canonical_path(path))):
            rows = self._query("SELECT id FROM images WHERE path=? AND vector IS NOT NULL", (_b(p),))
            if rows:
                return rows[0][0]
        return None

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
        """Ids of embedded images under ``folder`` and taken within ``[after, before)``.

        ``folder`` may also be a symbolic link to a library folder (stored by its real path)."""
        sql, params = "SELECT id FROM images WHERE vector IS NOT NULL", []
        if folder:
            prefixes = [_b(f.rstrip(os.sep) + os.sep) for f in dict.fromkeys((folder, os.path.realpath(folder)))]
            sql += " AND (" + " OR ".join(["substr(path, 1, ?) = ?"] * len(prefixes)) + ")"
            params += [v for p in prefixes for v in (len(p), p)]
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
        row = self._query("SELECT (SELECT count(*) FROM images WHERE vector IS NOT NULL),"
                          " (SELECT count(*) FROM images WHERE error IS NOT NULL)")[0]
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

    def add_to_label(self, name: str, ids: Iterable[int], corrected: bool = False) -> None:
        """Add members; ``corrected``: given because the probe predicted another label (a photo
        already in the label keeps how it was given)."""
        with self.transaction() as c:
            c.execute("INSERT OR IGNORE INTO labels(name, created) VALUES (?, ?)", (name, time.time()))
            c.executemany("INSERT OR IGNORE INTO label_members(label, image_id, corrected) VALUES (?, ?, ?)",
                          [(name, i, int(corrected)) for i in ids])

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

    def corrections(self) -> dict[str, set[int]]:
        """Per label, the member ids given as corrections (labels without any are left out)."""
        out: dict[str, set[int]] = {}
        for name, image_id in self._query("SELECT label, image_id FROM label_members WHERE corrected != 0"):
            out.setdefault(name, set()).add(int(image_id))
        return out

    # --- library care
    def hash_groups(self, folder: str | None = None) -> list[list[int]]:
        """Ids of embedded images sharing a content fingerprint, one list per fingerprint held by
        two or more of them (under ``folder`` only, when given). Uses the hash index."""
        sql = ("SELECT hash, id FROM images WHERE vector IS NOT NULL AND hash IN ("
               "SELECT hash FROM images WHERE vector IS NOT NULL AND hash IS NOT NULL{where}"
               " GROUP BY hash HAVING count(*) > 1){where} ORDER BY hash, id")
        where, params = "", []
        if folder:
            prefix = _b(folder.rstrip(os.sep) + os.sep)
            where, params = " AND substr(path, 1, ?) = ?", [len(prefix), prefix]
        groups: dict[str, list[int]] = {}
        for h, i in self._query(sql.format(where=where), params * 2):
            groups.setdefault(h, []).append(int(i))
        return list(groups.values())


def integrity_problems(path: str) -> list[str]:
    """``PRAGMA integrity_check`` of a catalog file: an empty list when it is sound."""
    try:
        if folder_writable(os.path.dirname(os.path.abspath(path))):
            conn, copy_dir = sqlite3.connect(_ro_uri(path), uri=True), None
        else:
            conn, copy_dir = _connect_read_only(path)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        finally:
            conn.close()
            if copy_dir:
                shutil.rmtree(copy_dir, ignore_errors=True)
    except sqlite3.DatabaseError as e:
        folder = os.path.dirname(os.path.abspath(path))
        if is_disk_full(e, folder):  # not damage: a repair would only move a sound catalog aside
            raise _full(folder, "check the catalog") from None
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
        src = sqlite3.connect(_ro_uri(damaged), uri=True)
        src.execute("SELECT name FROM sqlite_master").fetchall()
    except sqlite3.DatabaseError:
        fresh.close()
        return {}  # not a database at all: a fresh, empty catalog
    tables = {"meta": "key, value", "folders": "path, added",
              "images": "id, path, size, mtime_ns, hash, width, height, taken, error, vector, vgen",
              "labels": "name, created", "label_members": "label, image_id, corrected"}
    try:
        for table, cols in tables.items():
            cols = _present_columns(src, table, cols)  # an older catalog lacks the newer columns
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


def _present_columns(src: sqlite3.Connection, table: str, cols: str) -> str:
    """The columns of ``cols`` that ``table`` of ``src`` has (all of them when its schema cannot
    be read: the row reads then say what is readable)."""
    try:
        have = {r[1] for r in src.execute(f"PRAGMA table_info({table})").fetchall()}
    except sqlite3.DatabaseError:
        return cols
    kept = [c.strip() for c in cols.split(",") if c.strip() in have]
    return ", ".join(kept) if have and kept else cols


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
