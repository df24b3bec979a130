"""The Library facade: one library folder = catalog + vector index + model + probes.

Everything the CLI and the GUI do goes through here. Long jobs (index, classify, train,
predict) report progress through a callback and stop when their cancel token is set; they never
print. The model loads lazily on first use, so opening a library and searching by an image already
in it costs no model load.

On disk (see DESIGN.md): ``catalog.sqlite`` (source of truth, vectors included),
``vectors.faiss`` (derived cache, caught up or rebuilt on open), ``probes/NAME.npz`` (no pickle),
``thumbnails/`` (GUI cache) and ``lock`` (writer lock).
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipdesk.errors import ClipdeskError, DiskFullError, ModelMismatchError, ProbeError, QueryError
from clipdesk.indexer.catalog import Catalog, ImageInfo
from clipdesk.indexer.decode import decode_image, describe_os_error
from clipdesk.indexer.errors import UnreadableImageError
from clipdesk.indexer.files import atomic_write, check_library_entry, folder_writable, open_regular
from clipdesk.indexer.lock import LibraryLock
from clipdesk.indexer.pipeline import CancelToken, EmbedEngine, IndexReport, Progress, index_files
from clipdesk.indexer.scan import canonical_path, is_inside, is_library_folder
from clipdesk.indexer import vecfile  # noqa: I001 - beside vectors: the other derived cache
from clipdesk.indexer.vecfile import VecFileError, VectorFile
from clipdesk.indexer.vectors import COMPRESS_LIMIT, EXACT_LIMIT, VectorFileError, VectorStore, catch_up
from clipdesk.runtime import DEFAULT_MODEL, Encoder, ModelSpec, load_encoder, needs_torch
from clipdesk.teach.probe import BACKGROUND, FitReport, Probe, ProbeData, fit_probe, load_probe_file, uncertainty
from clipdesk.query import Term, parse_query, query_vector
from clipdesk.results import Classification, Classifications
from clipdesk.teaching import bucket_data, is_negative, positive_of
from clipdesk.zeroshot import class_weights, top_category, zeroshot_probabilities

ProgressFn = Callable[[Progress], None]
BACKGROUND_SAMPLE = 200  # library photos sampled as "the rest" when one concept is taught
SUGGEST_CANDIDATES = 4000  # images a pre-training diverse sample is drawn from
_CACHE_ROWS = 4096  # rows a whole-library pass converts and hands on at a time (8 MB at 512-d)
_PASS_WORKERS = 4  # at most, and no more than the cores
_PROBE_NAME = re.compile(r"^[\w][\w .+-]{0,99}$")

_blas_lock = threading.Lock()
_blas_users = 0
_blas_limit = None


@contextmanager
def _one_blas_thread():
    """BLAS on one thread per call while whole-library passes run (BLAS's setting is the
    process's: the first pass in sets it, the last one out restores it)."""
    global _blas_users, _blas_limit
    from threadpoolctl import threadpool_limits

    with _blas_lock:
        if _blas_users == 0:
            _blas_limit = threadpool_limits(1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limit.restore_original_limits()
                _blas_limit = None


def check_library_folder(folder: str, create: bool) -> None:
    """Refuse, with one clear message, a folder that is not (and cannot become) a library.

    With ``create``, a folder with no catalog may become a new library (:func:`create_library`
    makes it); without, it is :class:`LibraryNotFoundError`. Nothing is created here. Either way,
    a catalog that is empty (0 bytes) or another program's SQLite database is refused before it
    is opened, so it never silently turns into a new empty library.
    """
    from clipdesk.errors import CatalogCorruptError, LibraryNotFoundError

    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise ClipdeskError(f"{folder} is a file, not a library folder.")
    blocker = next((p for p in _ancestors(folder) if os.path.lexists(p) and not os.path.isdir(p)), None)
    if blocker is not None:
        raise (ClipdeskError if create else LibraryNotFoundError)(
            f"No library can be at {folder}: {blocker} is a file, not a folder.")
    catalog = os.path.join(folder, Catalog.FILENAME)
    if not os.path.lexists(catalog):
        if not create:
            raise LibraryNotFoundError(
                f"No library at {folder}. Create one with 'clipdesk --library {folder} index FOLDER'.")
        return
    if not os.path.isfile(catalog):
        raise CatalogCorruptError(f"The catalog {catalog} is not a regular file.")
    if os.path.getsize(catalog) == 0 and _has_library_content(folder):
        raise CatalogCorruptError(
            f"The catalog {catalog} is empty (0 bytes): its content was lost. Run 'clipdesk repair' to "
            "start it afresh (photos are not touched), or restore it from a backup.")
    foreign = _foreign_tables(catalog)
    if foreign:
        raise CatalogCorruptError(
            f"{catalog} is not a clipdesk catalog (it is an SQLite database with the tables "
            f"{', '.join(foreign[:5])}). Use another library folder, or move that file away.")


_STAGING = ".creating-"  # .NAME.creating-XXXX: a library being created beside NAME
_STALE_STAGING_S = 3600  # older ones were left by a creation that was killed
# What creating a library takes at its peak (catalog, its WAL and shared-memory index): it took
# 200 KB on a tmpfs (4 KB pages) and failed with 180 KB.
_CREATE_BYTES = 256 * 1024


def create_library(folder: str, spec: ModelSpec | None = None) -> None:
    """Create the library at ``folder`` whole or not at all: catalog, schema, the model asked for
    (``spec``) and the library's id.

    It is made in a hidden folder beside ``folder`` and renamed into place, so a full disk (or a
    crash) part-way leaves no catalog at ``folder`` for a later command to take for a library.
    A rename rather than a completion marker: a marker would have to be checked by every
    reader, and libraries made before it existed have none. A folder that already holds other
    files receives the finished catalog file instead (hard-linked, so a library another process
    created meanwhile is never replaced). Parent folders are made as needed; an empty one left
    behind is not a library.
    """
    from clipdesk.indexer.errors import disk_full_error, is_disk_full

    parent, name = os.path.split(folder)
    staging = None
    try:
        os.makedirs(parent, exist_ok=True)
        _sweep_stale_staging(parent, name)
        staging = tempfile.mkdtemp(prefix=f".{name}{_STAGING}", dir=parent)
        catalog = Catalog.open(staging)
        try:
            if spec is not None:
                catalog.set_meta("model", spec.name)
                if spec.weights:
                    catalog.set_meta("weights", spec.weights)
                if spec.folder:
                    catalog.set_meta("model_dir", spec.folder)
            catalog.library_id(create=True)
            catalog.checkpoint()  # everything into catalog.sqlite: the WAL may not travel with it
        finally:
            catalog.close()
        _fsync_dir(staging)
        try:
            os.rename(staging, folder)  # replaces an empty folder too, atomically
            staging = None
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                raise
            _place_catalog(os.path.join(staging, Catalog.FILENAME), os.path.join(folder, Catalog.FILENAME))
        _fsync_dir(parent)
    except (ClipdeskError, OSError) as e:
        if is_disk_full(e, parent if os.path.isdir(parent) else None):
            raise disk_full_error(folder, "create the library", _CREATE_BYTES,
                                  "Nothing was created; free some space and try again.") from None
        if isinstance(e, ClipdeskError):
            raise
        raise ClipdeskError(f"Cannot create a library at {folder}: {e.strerror or e}.") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _place_catalog(src: str, dst: str) -> None:
    """Move a finished catalog into a folder that holds other files, never over another catalog."""
    try:
        os.link(src, dst)  # fails if a catalog appeared meanwhile: that library is the one to open
    except FileExistsError:
        return
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if not os.path.lexists(dst):  # a file system without hard links (FAT, exFAT)
            os.rename(src, dst)


def _sweep_stale_staging(parent: str, name: str) -> None:
    prefix = f".{name}{_STAGING}"
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(prefix)]
    except OSError:
        return
    for e in entries:
        try:
            age = time.time() - e.stat(follow_symlinks=False).st_mtime
            if e.is_dir(follow_symlinks=False) and age > _STALE_STAGING_S:
                shutil.rmtree(e.path, ignore_errors=True)
        except OSError:
            pass


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # not possible everywhere (Windows); the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_CATALOG_TABLES = {"meta", "folders", "images", "tombstones", "labels", "label_members"}


def _has_library_content(folder: str) -> bool:
    """Whether a folder holds more than a catalog being created (a crash while a new library was
    being set up leaves an empty catalog that may be started afresh; beside anything else it
    means lost content)."""
    creating = {Catalog.FILENAME, f"{Catalog.FILENAME}-shm", f"{Catalog.FILENAME}-journal", "lock"}
    try:
        names = set(os.listdir(folder))
    except OSError:
        return True
    wal = os.path.join(folder, f"{Catalog.FILENAME}-wal")
    return bool(names - creating - {f"{Catalog.FILENAME}-wal"}) or (os.path.isfile(wal) and os.path.getsize(wal) > 0)


def _ancestors(path: str) -> list[str]:
    out = []
    parent = os.path.dirname(path)
    while parent and parent != path:
        out.append(parent)
        path, parent = parent, os.path.dirname(parent)
    return out[::-1]


def _foreign_tables(catalog: str) -> list[str]:
    """The tables of an SQLite file that holds none of a catalog's tables (else [])."""
    import sqlite3

    try:
        from urllib.parse import quote

        conn = sqlite3.connect(f"file:{quote(os.fsencode(catalog))}?mode=ro", uri=True, timeout=5)
        try:
            tables = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"))
        finally:
            conn.close()
    except sqlite3.Error:
        return []  # not readable as SQLite: the catalog's own checks report the damage
    return tables if tables and not _CATALOG_TABLES & set(tables) else []


def default_library_folder() -> str:
    """``$CLIPDESK_LIBRARY``, else ``<user data dir>/clipdesk/library``."""
    env = os.environ.get("CLIPDESK_LIBRARY")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    from platformdirs import user_data_dir

    return os.path.join(user_data_dir("clipdesk", appauthor=False), "library")


@dataclass(frozen=True)
class SearchResult:
    path: str
    score: float
    id: int
    taken: float | None = None

    def as_dict(self) -> dict:
        return {"path": self.path, "score": round(float(self.score), 6)}


@dataclass(frozen=True)
class ProbeInfo:
    name: str
    classes: list[str]
    labels: list[str]
    examples: int
    cv_accuracy: float
    zeroshot_accuracy: float
    model: str
    created: float
    damaged: str | None = None  # why the probe file cannot be used (then the other fields are empty)


@dataclass(frozen=True)
class TrainReport:
    probe: str
    labels: list[str]
    examples: int
    cv_accuracy: float
    zeroshot_accuracy: float

    def as_dict(self) -> dict:
        return {"probe": self.probe, "labels": self.labels, "examples": self.examples,
                "cv_accuracy": round(self.cv_accuracy, 4), "zeroshot_accuracy": round(self.zeroshot_accuracy, 4)}


# The labels `tags import` makes of ratings, pick/reject flags and colour labels (clipdesk/tags.py)
MARK_LABELS = ("rating/", "flag/", "color/")


class Library:
    """A photo library on disk. Thread-safe for one writer thread plus reader threads."""

    VECTORS = "vectors.faiss"
    VECFILE = vecfile.FILENAME  # every vector as float16, memory-mapped (see indexer/vecfile.py)

    def __init__(self, folder: str | None = None, model: str | None = None, weights: str | None = None,
                 device: str | None = None, precision: str = "auto", create: bool = True,
                 status: Callable[[str], None] | None = None, model_process: bool = False,
                 model_dir: str | None = None):
        self.folder = os.path.abspath(os.path.expanduser(folder or default_library_folder()))
        self._requested = ModelSpec.parse(model, weights, model_dir) if (model or weights or model_dir) else None
        check_library_folder(self.folder, create)
        if create and not os.path.lexists(os.path.join(self.folder, Catalog.FILENAME)):
            create_library(self.folder, self._requested)
        self.catalog = Catalog.open(self.folder, create=False)
        self.lock = LibraryLock(self.folder)
        # Library files are never followed out of the library (a planted link could make clipdesk
        # read or overwrite another file): a linked lock, cache or probes folder is refused.
        try:
            for name, kind in ((LibraryLock.FILENAME, "file"), (self.VECTORS, "file"), ("probes", "dir"),
                               ("thumbnails", "dir")):
                check_library_entry(os.path.join(self.folder, name), kind)
        except ClipdeskError:
            self.catalog.close()
            raise
        self.device = device
        self.precision = precision
        # The desktop app runs a torch model in a child process (see model_host.py); model folders
        # (ONNX Runtime, OpenVINO: no GIL held while they compute) and the CLI run in-process.
        self.model_process = model_process
        self.status_callback = status or (lambda _m: None)
        self._encoder: Encoder | None = None
        self._store: VectorStore | None = None
        self._vf: VectorFile | None = None  # the vector file, kept open for re-ranking (see _exact_vectors)
        self._guard = threading.RLock()
        self._writer = threading.RLock()  # one writer thread at a time (see writing())
        stored = self.catalog.get_meta("model")
        if self._requested is not None:
            self.spec = self._requested
        elif stored:
            self.spec = ModelSpec.parse(stored if "+file:" not in stored else stored.split("+", 1)[0],
                                        self.catalog.get_meta("weights"), self.catalog.get_meta("model_dir"))
        else:
            self.spec = ModelSpec.parse(DEFAULT_MODEL)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self.lock.release()
        if self._vf is not None:
            self._vf.close()
        self.catalog.close()
        if self._encoder is not None and hasattr(self._encoder, "close"):
            self._encoder.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def model_name(self) -> str:
        """The model of this library's vectors (or, for an empty library, the one it will use)."""
        return self.catalog.get_meta("model") or self.spec.name

    @property
    def dim(self) -> int | None:
        d = self.catalog.get_meta("dim")
        return int(d) if d else None

    def check_model(self) -> None:
        """Refuse to mix vectors of two models (:class:`ModelMismatchError`)."""
        stored = self.catalog.get_meta("model")
        if stored and self._requested is not None and self._requested.name != stored \
                and self.catalog.vector_count() > 0:
            raise ModelMismatchError(
                f"This library was indexed with {stored}, not {self._requested.name}. Use the "
                f"library's model (omit --model), or convert it with 'clipdesk index --reembed "
                f"--model {self._requested.name.split('+')[0]}'.")

    @property
    def encoder(self) -> Encoder:
        """The model, loaded on first use (seconds for a real model; downloads once)."""
        with self._guard:
            if self._encoder is None or getattr(self._encoder, "text_only", False):
                if self.model_process and needs_torch(self.spec, self.device):
                    from clipdesk.model_host import RemoteEncoder

                    self._encoder = RemoteEncoder(self.spec, self.device, self.precision, self.status_callback)
                else:
                    self._encoder = load_encoder(self.spec, self.device, self.precision, self.status_callback)
            return self._encoder

    @property
    def text_encoder(self) -> Encoder:
        """An encoder for texts: the loaded model, or a text-only load of it (less memory)."""
        with self._guard:
            if self._encoder is None and not (self.model_process and needs_torch(self.spec, self.device)):
                self._encoder = load_encoder(self.spec, self.device, self.precision, self.status_callback,
                                             text_only=True)
            return self._encoder if self._encoder is not None else self.encoder

    @property
    def encoder_loaded(self) -> bool:
        return self._encoder is not None

    @property
    def loaded_encoder(self) -> Encoder | None:
        """The model if it is loaded, else None; never loads it (the app's About box)."""
        return self._encoder

    # ------------------------------------------------------------------ vectors
    @property
    def vectors(self) -> VectorStore:
        """The vector index, caught up with the catalog (rebuilt if missing or damaged)."""
        with self._guard:
            if self._store is None:
                self._store = self._open_store()
            catch_up(self._store, self.catalog)
            return self._store

    def _open_store(self) -> VectorStore:
        path = os.path.join(self.folder, self.VECTORS)
        dim = self.dim
        try:
            # The file is untrusted: it may not declare more vectors than the catalog can account for.
            store, header = VectorStore.load(path, max_count=self.catalog.vector_bound())
            if header.model != self.model_name or (dim and header.dim != dim) \
                    or header.generation > self.catalog.generation:
                raise VectorFileError("made for another catalog state or model")
            return store
        except VectorFileError as e:
            if os.path.exists(path):
                self.status_callback(f"Rebuilding the vector index ({e}).")
        if dim is None:
            return VectorStore(self.encoder.dim if self.catalog.vector_count() else 1)
        store = VectorStore.build(dim, self.catalog.iter_vectors(), self.catalog.vector_count())
        store.generation = 0  # catch_up() brings it to the catalog's generation
        return store

    def _save_store(self) -> None:
        """Persist the vector index (writers only: the lock holder owns ``vectors.faiss``)."""
        if self._store is not None and self.lock.held:
            self._store.save(os.path.join(self.folder, self.VECTORS), self.model_name)
            # Deletions stay recorded until both caches have seen them.
            gen = self._write_vector_file()
            self.catalog.prune_tombstones(self._store.generation if gen is None else min(self._store.generation, gen))

    def _write_vector_file(self, rebuild: bool = False) -> int | None:
        """Bring ``vectors.f16`` up to the catalog (writers only; ``rebuild``: from scratch);
        returns the generation it reflects (None when there is no file)."""
        dim = self.dim
        if dim is None or not self.lock.held:
            return None
        path = os.path.join(self.folder, self.VECFILE)
        try:
            state, header = vecfile.sync(path, self.catalog, self.model_name, self.catalog.library_id(create=True),
                                         dim, rebuild=rebuild)
        except VecFileError as e:  # e.g. a hand-edited catalog with negative ids: read the catalog
            self.status_callback(f"The vector file cannot be written ({e}); reading vectors from the catalog.")
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return None
        if state == "rebuilt" and header.live > 100_000:
            self.status_callback(f"Rewrote the vector file ({header.live} vectors).")
        return header.generation

    def _vector_file(self, rebuild: bool = False) -> VectorFile | None:
        """``vectors.f16``, open and validated, when it can be caught up with the catalog; else
        None (whole-library passes then read the catalog).

        A missing, damaged (``rebuild``: known damaged) or stale file is first brought up to date
        when the library's writer lock is free; it is never waited for: with another writer at
        work, or on read-only storage, a stale file is read with the catalog's changes overlaid
        (see ``vecfile.overlay``), a missing or damaged one not at all."""
        vf = None if rebuild else self._open_vector_file()
        if vf is not None and vf.header.generation == self.catalog.generation:
            return vf
        if self.dim is None or self.catalog.read_only or not folder_writable(self.folder) \
                or not self._writer.acquire(blocking=False):
            return vf
        try:
            held = self.lock.held
            if not held:
                try:
                    self.lock.acquire()
                except (ClipdeskError, OSError):
                    return vf
            try:
                if vf is not None:
                    vf.close()
                try:
                    self._write_vector_file(rebuild=rebuild)
                except DiskFullError as e:  # only a cache: this pass reads the catalog instead
                    self.status_callback(str(e))
                    return None
            finally:
                if not held:
                    self.lock.release()
        finally:
            self._writer.release()
        return self._open_vector_file()

    def _open_vector_file(self) -> VectorFile | None:
        dim, lid = self.dim, self.catalog.library_id()
        if dim is None or lid is None:
            return None
        try:
            vf = VectorFile.open(os.path.join(self.folder, self.VECFILE))
        except VecFileError:
            return None
        if vecfile.catchable(vf, self.catalog, self.model_name, lid, dim):
            return vf
        vf.close()
        return None

    def _exact_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """(n, dim) float32 vectors of embedded ``ids``: from the vector file when it reflects the
        catalog as it is now, else from the catalog."""
        with self._guard:
            vf = self._vf
            gen = self.catalog.generation
            if vf is None or vf.header.generation != gen:
                if vf is not None:
                    vf.close()
                lid = self.catalog.library_id()
                try:
                    vf = VectorFile.open(os.path.join(self.folder, self.VECFILE))
                    if vf.header.generation != gen or vf.header.library != lid or vf.header.model != self.model_name:
                        vf.close()
                        vf = None
                except VecFileError:
                    vf = None
                self._vf = vf
            if vf is not None:
                try:
                    return vf.rows_for(np.asarray(ids, np.int64))
                except (KeyError, OSError, ValueError):
                    pass
        return self.catalog.vectors_for(list(ids))

    @contextmanager
    def writing(self) -> Iterable[None]:
        """Hold the library's writer lock for a block (re-entrant within a thread). Writer threads
        of one process take turns (the app's jobs and its folder watcher share one Library)."""
        with self._writer:
            if self.lock.held:
                yield
                return
            self.lock.acquire()
            try:
                yield
            finally:
                self.lock.release()

    # ------------------------------------------------------------------ indexing
    def index(self, paths: Sequence[str] = (), progress: ProgressFn | None = None,
              cancel: CancelToken | None = None, reembed: bool = False, batch_size: int = 32,
              workers: int | None = None, engine: EmbedEngine | None = None) -> IndexReport:
        """Add folders (or files) and bring the library up to date with what is on disk.

        With no paths, every folder of the library is rescanned. ``reembed`` converts a library
        made with another model to this one (labels are kept). ``engine`` embeds elsewhere (see
        :meth:`ray_engine`); the scan, the diff and the commits stay here.
        """
        with self.writing():
            stored = self.catalog.get_meta("model")
            if reembed and stored and stored != self.spec.name:
                self.status_callback(f"Re-embedding every image with {self.spec.name} (was {stored}).")
                self.catalog.clear_vectors()
                self.catalog.set_meta("model", self.spec.name)
                with self._guard:
                    self._store = None
                for name in (self.VECTORS, self.VECFILE):
                    try:
                        os.unlink(os.path.join(self.folder, name))
                    except FileNotFoundError:
                        pass
            else:
                self.check_model()
            roots = self._register_roots(paths) or self.catalog.folders()
            if not self.catalog.get_meta("model") or self.catalog.vector_count() == 0:
                encoder = self.encoder
                self.catalog.set_meta("model", encoder.name)
                self.catalog.set_meta("dim", str(encoder.dim))
                if self.spec.weights:
                    self.catalog.set_meta("weights", self.spec.weights)
                if self.spec.folder:
                    self.catalog.set_meta("model_dir", self.spec.folder)
                with self._guard:
                    if self._store is not None and self._store.dim != encoder.dim:
                        self._store = None
            store = self.vectors
            if store.dim != self.dim:
                with self._guard:
                    self._store = VectorStore(self.dim)
                store = self.vectors
            # The model loads only once there is something to embed: a rescan of an unchanged
            # library costs a directory walk, not a model load.
            report = index_files(self.catalog, store, _LazyEmbedder(self), roots, batch_size=batch_size,
                                 workers=workers, progress=progress, cancel=cancel,
                                 checkpoint=self._save_store, exclude=[self.folder], engine=engine)
            self._resize_store_if_needed()
            return report

    def ray_engine(self, address: str | None = None, gpus_per_worker: float = 0.0,
                   cpus_per_worker: float = 1.0, workers: int | None = None) -> EmbedEngine:
        """An ``engine`` for :meth:`index` that decodes and embeds on a Ray cluster: each worker
        loads this library's model once, exactly as :attr:`encoder` does here (same spec and
        precision rule, its own device). Needs ``clipdesk[cluster]``."""
        from functools import partial

        from clipdesk.cluster import RayEngine

        return RayEngine(partial(load_encoder, self.spec, self.device, self.precision), address,
                         gpus_per_worker, cpus_per_worker, workers)

    def _register_roots(self, paths: Sequence[str]) -> list[str]:
        """Canonical roots for ``paths``, folders registered with the library.

        A folder is registered by its real path (a symbolic link to a known folder is that folder,
        so no photo gets two rows); a file keeps its own name in its folder's real path. The
        library's own folder, and any folder holding a clipdesk library, is refused. Folders that
        older versions registered through a link are re-registered by their real path first.
        """
        self.catalog.canonicalise_folders()
        paths = [os.path.abspath(os.path.expanduser(p)) for p in paths]
        own = os.path.realpath(self.folder)
        for p in paths:
            if os.path.isdir(p) and (is_inside(os.path.realpath(p), own) or is_library_folder(p)):
                raise ClipdeskError(f"{p} is a clipdesk library folder, not a photo folder; it is not indexed.")
        return [self.catalog.add_folder(p) if os.path.isdir(p) else canonical_path(p) for p in paths]

    def _resize_store_if_needed(self) -> None:
        """Switch between exact, approximate and compressed search as the library crosses the size
        thresholds (with a factor of two of hysteresis downwards)."""
        store = self.vectors
        n = len(store)
        compressed = store.kind == "ivf-pq"
        if (n > EXACT_LIMIT and not store.is_approximate) or (store.is_approximate and n < EXACT_LIMIT // 2) \
                or (n > COMPRESS_LIMIT and not compressed) or (compressed and n < COMPRESS_LIMIT // 2):
            self.status_callback(f"Rebuilding the vector index for {n} images…")
            with self._guard:
                new = VectorStore.build(store.dim, self.catalog.iter_vectors(), self.catalog.vector_count())
                new.generation = 0
                catch_up(new, self.catalog)
                self._store = new
            self._save_store()

    def remove_folder(self, folder: str) -> int:
        """Forget a folder and its images (files on disk are never touched)."""
        with self.writing():
            ids = self.catalog.remove_folder(os.path.abspath(os.path.expanduser(folder)))
            self.vectors  # noqa: B018 - catch the index up with the deletion
            self._save_store()
            return len(ids)

    # ------------------------------------------------------------------ search
    def embed_image_file(self, path: str) -> np.ndarray:
        """(dim,) embedding of an image: from the catalog if indexed, else decoded and embedded."""
        path = os.path.abspath(os.path.expanduser(path))
        image_id = self.catalog.id_for_path(path)
        if image_id is not None:
            return self.catalog.vectors_for([image_id])[0]
        try:  # a device, a FIFO or a missing file is refused before the model loads
            os.close(open_regular(path))
        except OSError as e:
            raise QueryError(f"Cannot use {path} as a query: {describe_os_error(e)}") from None
        enc = self.encoder
        try:
            img = decode_image(path, enc.min_side)
        except UnreadableImageError as e:
            raise QueryError(f"Cannot use {path} as a query: {e.reason}") from None
        return enc.encode_images([img.image])[0]

    def query_vector(self, query: str) -> np.ndarray:
        """The (dim,) vector of a query string (see ``clipdesk.query`` for the syntax)."""
        terms = parse_query(query)
        if any(t.text is not None for t in terms):
            self.check_model()
            texts = self.text_encoder.encode_texts
        else:
            texts = None
        return query_vector(terms, texts, self.embed_image_file)

    def search(self, query: str | np.ndarray, k: int = 20, folder: str | None = None,
               after: float | None = None, before: float | None = None, min_score: float | None = None,
               sort: str = "score", exclude: Iterable[int] = (),
               only: Iterable[int] | None = None) -> list[SearchResult]:
        """Top-``k`` images for a query string or a (dim,) query vector, best first (or by date).

        ``only``: image ids to search among (the photos a rating or flag filter leaves)."""
        if isinstance(query, str) and not self.catalog.has_vectors():
            parse_query(query)  # a malformed query is still reported; no model load for nothing
            return []
        q = self.query_vector(query) if isinstance(query, str) else np.asarray(query, np.float32)
        store = self.vectors
        if len(store) == 0:
            return []
        if q.shape[-1] != store.dim:
            raise QueryError("The query vector does not match this library's model.")
        exclude = set(exclude)
        subset = None
        if folder or after is not None or before is not None:
            subset = self.catalog.filter_ids(os.path.abspath(os.path.expanduser(folder)) if folder else None,
                                             after, before)
        if only is not None:
            keep = np.fromiter(only, np.int64)
            subset = keep if subset is None else np.intersect1d(subset, keep)
            if not len(subset):
                return []
        want = k + len(exclude)
        if store.is_approximate:
            # Over-fetch from the compressed index and re-rank with the exact vectors (of the
            # vector file, else the catalog): quantised codes blur near-ties, and a few hundred
            # rows are cheap to read.
            scores, ids = store.search(q[None, :], store.shortlist(want), subset)
            cand = [int(i) for i in ids[0] if i >= 0]
            exact = self._exact_vectors(cand) @ q if cand else np.zeros(0, np.float32)
            order = np.argsort(-exact, kind="stable")[:want]
            scores, ids = exact[order][None, :], np.array(cand, np.int64)[order][None, :]
        else:
            scores, ids = store.search(q[None, :], want, subset)
        pairs = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0 and int(i) not in exclude]
        if min_score is not None:
            pairs = [(s, i) for s, i in pairs if s >= min_score]
        info = self.catalog.images([i for _, i in pairs])
        results = [SearchResult(info[i].path, s, i, info[i].taken) for s, i in pairs if i in info][:k]
        if sort == "date":
            results.sort(key=lambda r: (r.taken is None, r.taken or 0.0))
        elif sort != "score":
            raise QueryError(f"Unknown sort order '{sort}' (use score or date).")
        return results

    def similar(self, path: str, k: int = 20, **filters) -> list[SearchResult]:
        """Images most like ``path`` (in the library or not), itself excluded."""
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.exists(path) and self.catalog.id_for_path(path) is None:
            raise QueryError(f"Image not found: {path}")
        own = self.catalog.id_for_path(path)
        return self.search(self.embed_image_file(path), k, exclude=[own] if own is not None else (), **filters)

    # ------------------------------------------------------------------ bulk scoring
    def _iter_library(self, cancel: CancelToken | None, progress: ProgressFn | None, stage: str):
        """Yield ``(ids, paths, vectors (n, dim) float32)`` over every embedded image in id order,
        with progress and cancellation. The vectors array is reused: use it before the next chunk.

        Converted and handed on a slice at a time: the float32 rows are still in the CPU's cache
        when the caller's product reads them (a whole block's 64 MB would go out to memory and back).
        """
        buf = None
        for ids, paths, vecs in self._library_blocks(cancel, progress, stage):
            for a in range(0, len(ids), _CACHE_ROWS):
                b = min(len(ids), a + _CACHE_ROWS)
                buf = vecfile.as_float32(vecs[a:b], buf)
                yield ids[a:b], paths[a:b], buf[:b - a]

    def _map_library(self, fn: Callable[[np.ndarray], tuple], cancel: CancelToken | None,
                     progress: ProgressFn | None, stage: str,
                     take: Callable[..., None] | None = None) -> list[tuple]:
        """``(ids, paths, *fn(vectors float32))`` for every slice of the library, in id order;
        or, with ``take``, each of them handed to ``take(ids, paths, *results)`` in that order
        instead of kept (memory then stays what ``take`` keeps).

        ``fn`` runs on worker threads, one per core, each on its own slices with one BLAS thread
        (many small products on BLAS's own threads wait on each other, badly so when other
        programs use the cores), while this thread maps, checks and reads the paths of the next
        block. ``fn`` must be thread-safe and return arrays it owns.
        """
        out: list[tuple] = []
        take = take or (lambda *part: out.append(part))
        workers = min(_PASS_WORKERS, os.cpu_count() or 1)
        if workers == 1:
            for ids, paths, v in self._iter_library(cancel, progress, stage):
                take(ids, paths, *fn(v))
            return out
        local = threading.local()

        def work(vecs: np.ndarray) -> tuple:
            local.buf = vecfile.as_float32(vecs, getattr(local, "buf", None))
            return fn(local.buf[:len(vecs)])

        pending: deque = deque()  # (ids, paths, future) in order; bounded: two blocks in flight
        pool = ThreadPoolExecutor(workers, thread_name_prefix=f"clipdesk-{stage}")
        try:
            with _one_blas_thread():
                for ids, paths, vecs in self._library_blocks(cancel, progress, stage):
                    for a in range(0, len(ids), _CACHE_ROWS):
                        b = min(len(ids), a + _CACHE_ROWS)
                        pending.append((ids[a:b], paths[a:b], pool.submit(work, vecs[a:b])))
                    del vecs  # the block's map closes once its slices are done
                    while pending and (pending[0][2].done() or len(pending) > 2 * vecfile.BLOCK // _CACHE_ROWS):
                        i, p, f = pending.popleft()
                        take(i, p, *f.result())
                while pending:
                    i, p, f = pending.popleft()
                    take(i, p, *f.result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return out

    def _library_blocks(self, cancel: CancelToken | None, progress: ProgressFn | None, stage: str,
                        chunk: int = 50_000):
        """Yield ``(ids, paths, vectors (n, dim))`` a block at a time over every embedded image in
        id order, with progress and cancellation: float16 views of the vector file's mapped block,
        or float32 from the catalog. A view keeps its block mapped until it is dropped.

        Vectors stream from the memory-mapped vector file (with the catalog's changes since it was
        written overlaid), else, when there is no usable file, from the catalog's rows.
        """
        vf = self._vector_file()
        changes = vecfile.overlay(vf, self.catalog) if vf is not None else None
        if changes is None:
            if vf is not None:
                vf.close()
            yield from self._iter_catalog(cancel, progress, stage, chunk)
            return
        with vf:
            total = vf.header.live - int(np.isin(changes[0], vf.ids[vf.live_mask]).sum()) + len(changes[1])
            done, last = 0, -1
            try:
                for ids, vecs in vecfile.chunks(vf, changes):
                    if cancel is not None:
                        cancel.check()
                    known, paths = self.catalog.live_paths(int(ids[0]), int(ids[-1]))
                    if not np.array_equal(known, ids):  # a writer changed the catalog meanwhile
                        keep = np.isin(ids, known)
                        ids, vecs = ids[keep], vecs[keep]
                        paths = [paths[p] for p in np.searchsorted(known, ids).tolist()]
                    if len(ids):
                        yield ids, paths, vecs
                        last = int(ids[-1])
                    del vecs
                    done += len(ids)
                    if progress:
                        progress(Progress(stage, min(done, total), total))
            except VecFileError as e:  # damaged: the catalog has the rest; a writer rebuilds the file
                self.status_callback(f"Reading the rest from the catalog ({e}).")
                damaged = True
            else:
                damaged = False
        if damaged:
            yield from self._iter_catalog(cancel, progress, stage, chunk, after=last)
            rebuilt = self._vector_file(rebuild=True)
            if rebuilt is not None:
                rebuilt.close()

    def _iter_catalog(self, cancel: CancelToken | None, progress: ProgressFn | None, stage: str,
                      chunk: int, after: int = -1):
        total = self.catalog.vector_count()
        done = 0
        for ids, paths, vecs in self.catalog.iter_embedded(chunk=chunk, after=after):
            if cancel is not None:
                cancel.check()
            yield ids, paths, vecs
            done += len(ids)
            if progress:
                progress(Progress(stage, done, total))

    def _paths(self, ids: Sequence[int]) -> dict[int, ImageInfo]:
        return self.catalog.images(list(map(int, ids)))

    def classify(self, names: Sequence[str], threshold: float | None = None,
                 progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> Classifications:
        """Zero-shot: every indexed image's most likely category among ``names`` (or None, under
        ``threshold``), as columns (see :class:`Classifications`)."""
        names = [n.strip() for n in names if n.strip()]
        if len(names) < 1:
            raise QueryError("Give at least one category.")
        if len(set(names)) != len(names):
            raise QueryError("Categories must be different from each other.")
        self.check_model()
        enc = self.text_encoder
        weights = class_weights(enc.encode_texts, names)
        scale = enc.logit_scale
        parts = self._map_library(lambda v: top_category(zeroshot_probabilities(v, weights, scale), threshold),
                                  cancel, progress, "classify")
        return Classifications.concatenate(names, parts)

    # ------------------------------------------------------------------ labels
    def _ids_for_paths(self, paths: Sequence[str], progress: ProgressFn | None = None) -> list[int]:
        """Catalog ids of image files; files not in the library yet are indexed first."""
        from clipdesk.indexer.decode import supported_extensions

        paths = [os.path.abspath(os.path.expanduser(p)) for p in paths]
        missing = [p for p in paths if self.catalog.id_for_path(p) is None]
        if missing:
            exts = supported_extensions()
            bad = [p for p in missing if not os.path.isfile(p) or os.path.splitext(p)[1].lower() not in exts]
            if bad:
                raise ClipdeskError(f"Not image files in the library or that it can index: {_some(bad)}")
            report = self.index(missing, progress=progress)
            if report.failures:
                f = report.failures[0]
                raise ClipdeskError(f"Cannot add {f.path}: {f.reason}")
        ids = [self.catalog.id_for_path(p) for p in paths]
        lost = [p for p, i in zip(paths, ids) if i is None]
        if lost:  # e.g. a file removed or renamed while it was being indexed
            raise ClipdeskError(f"Not in the library: {_some(lost)}")
        return ids

    def add_to_label(self, name: str, paths: Sequence[str], progress: ProgressFn | None = None,
                     corrected: bool = False) -> int:
        """Add images to a label (created if new). Returns the label's size. ``corrected``: they
        are given because the probe said otherwise (the probe weighs such corrections apart)."""
        name = _check_name(name, "label")
        ids = self._ids_for_paths(paths, progress)
        self.catalog.add_to_label(name, ids, corrected=corrected)
        return len(self.catalog.labels()[name])

    def remove_from_label(self, name: str, paths: Sequence[str]) -> int:
        labels = self.catalog.labels()
        if name not in labels:
            raise ClipdeskError(f"No label named '{name}'.")
        ids = [self.catalog.id_for_path(os.path.abspath(os.path.expanduser(p))) for p in paths]
        self.catalog.remove_from_label(name, [i for i in ids if i is not None])
        return len(self.catalog.labels()[name])

    def create_label(self, name: str) -> None:
        self.catalog.create_label(_check_name(name, "label"))

    def delete_label(self, name: str) -> None:
        self.catalog.delete_label(name)

    def labels(self) -> dict[str, list[str]]:
        """Every label with the paths of its images."""
        labels = self.catalog.labels()
        info = self._paths([i for ids in labels.values() for i in ids])
        return {name: [info[i].path for i in ids if i in info] for name, ids in labels.items()}

    def corrections(self) -> dict[str, set[str]]:
        """Per label, the paths of the members given as corrections (``add_to_label(corrected=True)``)."""
        fixed = self.catalog.corrections()
        info = self._paths([i for ids in fixed.values() for i in ids])
        return {name: {info[i].path for i in ids if i in info} for name, ids in fixed.items()}

    # ------------------------------------------------------------------ probes
    def _probe_path(self, name: str) -> Path:
        return Path(self.folder) / "probes" / f"{_check_name(name, 'probe')}.npz"

    def train(self, name: str, labels: Sequence[str] | None = None, negatives: Sequence[str] = (),
              progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> TrainReport:
        """Train probe ``name`` on ``labels`` (default: every non-empty label) and save it.

        One label is taught as that concept against the rest of the library: a sample of other
        photos plus the images of any ``negatives`` labels.
        """
        self.check_model()
        all_labels = self.catalog.labels()
        negatives = list(negatives)
        if labels:
            unknown = [lb for lb in list(labels) + negatives if lb not in all_labels]
            if unknown:
                raise ProbeError(f"No label named {', '.join(repr(u) for u in unknown)}.")
            chosen = [lb for lb in labels if lb not in negatives]
        else:
            chosen = [lb for lb, ids in all_labels.items() if ids and lb not in negatives]
        chosen = [lb for lb in chosen if all_labels[lb]]
        if not chosen:
            raise ProbeError("No labelled images to train on: add some with 'clipdesk label add'.")
        if cancel:
            cancel.check()
        enc = self.text_encoder
        text = class_weights(enc.encode_texts, chosen)
        ids = [i for lb in chosen for i in all_labels[lb]]
        y = [c for c, lb in enumerate(chosen) for _ in all_labels[lb]]
        classes = list(chosen)
        zs_text = text
        if len(chosen) == 1:
            background = sorted({i for lb in negatives for i in all_labels[lb]} - set(ids))
            background += self._background_sample(name, exclude=set(ids) | set(background))
            if not background:
                raise ProbeError("Teaching one label needs other photos in the library to compare with.")
            ids += background
            y += [1] * len(background)
            classes.append(BACKGROUND)
            text = np.vstack([text, np.zeros_like(text[:1])])
            zs_text = np.vstack([text[:1], class_weights(enc.encode_texts, ["photo"])])
        X = self.catalog.vectors_for(ids)
        # Photos put in a bucket because the applied probe said another (see Catalog.corrections):
        # marked, so the probe keeps them out of how far it trusts the text.
        fixed = self.catalog.corrections()
        corrected = np.array([c < len(chosen) and i in fixed.get(chosen[c], ()) for i, c in zip(ids, y)], bool)
        if len(chosen) > 1:
            # Rejections: "__not__.A" (Review, the Teach tab) is "not A"; any other negatives label
            # is "none of the buckets". teaching.bucket_data decides how each enters the fit.
            inside = set(ids)
            rejected: dict[int, set[int]] = {}
            for lb in negatives:
                bucket = positive_of(lb)
                came = ({chosen.index(bucket)} if bucket in chosen else set()) if is_negative(lb) \
                    else set(range(len(chosen)))
                for i in all_labels[lb]:
                    if i not in inside and came:
                        rejected.setdefault(i, set()).update(came)
            rids = sorted(rejected)
            R = self.catalog.vectors_for(rids) if rids else np.zeros((0, X.shape[1]), np.float32)
            data, zs_text = bucket_data(chosen, text, X, np.array(y), R, [rejected[i] for i in rids],
                                        class_weights(enc.encode_texts, ["photo"]) if rids else None,
                                        corrected=corrected)
            y = data.y
        else:
            data = ProbeData(classes, text, X, np.array(y))
            if corrected.any():
                data.corrected = corrected
        if progress:
            progress(Progress("train", 0, 1))
        probe, fit = fit_probe(data, zs_text,
                               meta={"labels": chosen, "negatives": negatives, "model": self.model_name,
                                     "created": time.time()})
        self._save_probe(name, probe, fit)
        if progress:
            progress(Progress("train", 1, 1))
        return TrainReport(name, chosen, len(y) if len(chosen) > 1 else len(all_labels[chosen[0]]),
                           fit.cv_accuracy, fit.zeroshot_accuracy)

    def _background_sample(self, seed_text: str, exclude: set[int]) -> list[int]:
        ids = [i for i in self.catalog.filter_ids() if int(i) not in exclude]
        rng = np.random.default_rng(_stable_seed(seed_text))
        if len(ids) > BACKGROUND_SAMPLE:
            ids = list(rng.choice(ids, BACKGROUND_SAMPLE, replace=False))
        return [int(i) for i in ids]

    def _save_probe(self, name: str, probe: Probe, fit: FitReport) -> None:
        path = self._probe_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.meta.update(cv_accuracy=fit.cv_accuracy, zeroshot_accuracy=fit.zeroshot_accuracy,
                          examples=fit.examples)
        atomic_write(str(path), lambda f: np.savez(f, **probe.to_arrays()))

    def load_probe(self, name: str) -> Probe:
        path = self._probe_path(name)
        if not os.path.lexists(path):
            raise ProbeError(f"No probe named '{name}'. 'clipdesk probe list' lists them.")
        probe = load_probe_file(str(path))
        if probe.meta.get("model") != self.model_name:
            raise ModelMismatchError(f"Probe '{name}' was trained with {probe.meta.get('model')}, "
                                     f"but this library uses {self.model_name}; train it again.")
        return probe

    def probes(self) -> list[ProbeInfo]:
        """Every probe file; one that cannot be used is listed with ``damaged`` set to the reason."""
        out = []
        for path in sorted((Path(self.folder) / "probes").glob("*.npz")):
            try:
                p = load_probe_file(str(path))
            except ProbeError as e:
                out.append(ProbeInfo(path.stem, [], [], 0, 0.0, 0.0, "", 0.0, damaged=str(e)))
                continue
            m = p.meta
            out.append(ProbeInfo(path.stem, p.classes, m.get("labels", []), int(m.get("examples", 0)),
                                 float(m.get("cv_accuracy", 0)), float(m.get("zeroshot_accuracy", 0)),
                                 m.get("model", ""), float(m.get("created", 0))))
        return out

    def delete_probe(self, name: str) -> None:
        path = self._probe_path(name)
        if not os.path.lexists(path):
            raise ProbeError(f"No probe named '{name}'. 'clipdesk probe list' lists them.")
        path.unlink()

    def predict(self, name: str, progress: ProgressFn | None = None,
                cancel: CancelToken | None = None) -> Classifications:
        """Apply probe ``name`` to every indexed image: its label and confidence, as columns (see
        :class:`Classifications`).

        For a one-concept probe the label is the concept or None (probability is the concept's).
        """
        probe = self.load_probe(name)
        concept = BACKGROUND in probe.classes

        def answer(vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            probs = probe.probabilities(vecs)
            if concept:
                return np.where(probs[:, 0] >= 0.5, 0, -1).astype(np.int32), probs[:, 0].copy()
            return top_category(probs)

        return Classifications.concatenate(probe.classes, self._map_library(answer, cancel, progress, "predict"))

    def suggest(self, name: str, k: int = 20, cancel: CancelToken | None = None) -> list[Classification]:
        """Unlabelled images whose labels would teach probe ``name`` the most.

        With probe ``name`` trained: the images it is least sure about. Before any training: a
        diverse sample of the library (farthest-point sampling over at most
        ``SUGGEST_CANDIDATES`` random images), with label None and probability 0.
        """
        # photos someone decided on; marks other apps gave them (stars, flags, colours) are no decision
        labelled = {i for label, ids in self.catalog.labels().items() if not label.startswith(MARK_LABELS)
                    for i in ids}
        if not self._probe_path(name).exists():
            return self._diverse_sample(name, k, labelled)
        probe = self.load_probe(name)

        def answer(vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            probs = probe.probabilities(vecs)
            return (uncertainty(probs).astype(np.float32), *top_category(probs))

        labelled_ids = np.fromiter(labelled, np.int64, len(labelled))
        best: list[Classification] = []
        best_u = np.zeros(0, np.float32)

        def take(ids, paths, u, top, p) -> None:  # the k most uncertain so far; ties in id order
            nonlocal best, best_u
            rows = np.flatnonzero(~np.isin(ids, labelled_ids))
            rows = rows[np.argsort(-u[rows], kind="stable")[:k]]
            found = Classifications(probe.classes, ids[rows], [paths[r] for r in rows.tolist()], top[rows], p[rows])
            both_u = np.concatenate([best_u, u[rows]])
            keep = np.argsort(-both_u, kind="stable")[:k]
            both = best + list(found)
            best, best_u = [both[i] for i in keep.tolist()], both_u[keep]

        self._map_library(answer, cancel, None, "suggest", take)
        return best

    def _diverse_sample(self, seed_text: str, k: int, exclude: set[int]) -> list[Classification]:
        from clipdesk.sampling import farthest_point_sample

        ids = [int(i) for i in self.catalog.filter_ids() if int(i) not in exclude]
        rng = np.random.default_rng(_stable_seed(seed_text))
        if len(ids) > SUGGEST_CANDIDATES:
            ids = [int(i) for i in rng.choice(ids, SUGGEST_CANDIDATES, replace=False)]
        if not ids:
            return []
        picked = [ids[j] for j in farthest_point_sample(self.catalog.vectors_for(ids), k,
                                                       _stable_seed(seed_text))]
        info = self._paths(picked)
        return [Classification(info[i].path, None, 0.0, i) for i in picked if i in info]

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        images, failed = self.catalog.counts()
        probes = self.probes()
        return {
            "library": self.folder,
            "images": images,
            "failed": failed,
            "model": self.model_name,
            "dim": self.dim or 0,
            "folders": self.catalog.folders(),
            "probes": [p.name for p in probes if not p.damaged],
            "damaged_probes": [{"name": p.name, "reason": p.damaged} for p in probes if p.damaged],
            "labels": {k: len(v) for k, v in self.catalog.labels().items()},
            "failures": [{"path": p, "reason": r} for p, r in self.catalog.failures()],
        }


    # --- used by the app
    def browse(self, limit: int = 5000, only: Iterable[int] | None = None,
               exclude: Iterable[int] = ()) -> tuple[list[SearchResult], int]:
        """The newest ``limit`` images by date taken (undated last), and how many there are in all.

        What the app shows before any query. Read with one bounded query, so a million-photo
        library costs ``limit`` rows, not a million. ``only``/``exclude``: as in :meth:`search`
        (the photos a rating or flag filter leaves); the count is then of those.
        """
        exclude = set(exclude)
        if only is not None or exclude:
            return self._browse_some(limit, only, exclude)
        total = self.catalog.counts()[0]
        rows = self.catalog._query(  # noqa: SLF001 - one ordered, limited read; no catalog API for it yet
            "SELECT id, path, taken FROM images WHERE vector IS NOT NULL"
            " ORDER BY taken IS NULL, taken DESC, path LIMIT ?", (int(limit),))
        return [SearchResult(os.fsdecode(bytes(p)), 0.0, int(i), t) for i, p, t in rows], total

    def _browse_some(self, limit: int, only: Iterable[int] | None, exclude: set[int]) -> tuple[list[SearchResult], int]:
        def rows_of(ids: list[int]) -> list[tuple]:
            out: list[tuple] = []
            for at in range(0, len(ids), 900):  # SQLite's bound-parameter limit
                part = ids[at:at + 900]
                out += self.catalog._query(  # noqa: SLF001 - as browse
                    f"SELECT id, path, taken FROM images WHERE vector IS NOT NULL AND id IN ({','.join('?' * len(part))})",
                    part)
            return out

        if only is not None:
            rows = rows_of(sorted({int(i) for i in only} - exclude))
            rows.sort(key=lambda r: (r[2] is None, -(r[2] or 0.0), bytes(r[1])))
            total = len(rows)
        else:  # all but a few: the newest limit + len(exclude) rows hold the newest limit kept
            total = self.catalog.counts()[0] - len(rows_of(sorted(exclude)))
            rows = [r for r in self.catalog._query(  # noqa: SLF001 - as browse
                "SELECT id, path, taken FROM images WHERE vector IS NOT NULL"
                " ORDER BY taken IS NULL, taken DESC, path LIMIT ?", (int(limit) + len(exclude),))
                if r[0] not in exclude]
        return [SearchResult(os.fsdecode(bytes(p)), 0.0, int(i), t) for i, p, t in rows[:int(limit)]], total

    def search_terms(self, terms: Sequence[Term], k: int = 20, **kw) -> list[SearchResult]:
        """Search with already-parsed terms (the app keeps image terms out of its search field)."""
        if not terms:
            raise QueryError("The query is empty.")
        texts = None
        if any(t.text is not None for t in terms):
            self.check_model()
            texts = self.text_encoder.encode_texts
        own = {self.catalog.id_for_path(t.image) for t in terms if t.image is not None and t.weight > 0}
        exclude = set(kw.pop("exclude", ())) | {i for i in own if i is not None}
        return self.search(query_vector(list(terms), texts, self.embed_image_file), k, exclude=exclude, **kw)

    def empty_folders(self) -> list[str]:
        """Registered folders with no indexed photo (e.g. registered by a run that then failed)."""
        return [f for f in self.catalog.folders() if len(self.catalog.filter_ids(f)) == 0]

    def use_model(self, model: str | None, weights: str | None = None, model_dir: str | None = None) -> None:
        """Switch the model for the next load. Refused (:class:`ModelMismatchError`) when the
        library already holds vectors made by another model."""
        spec = ModelSpec.parse(model or self.spec.name.split("+")[0], weights, model_dir)
        stored = self.catalog.get_meta("model")
        if stored and stored != spec.name and self.catalog.vector_count() > 0:
            raise ModelMismatchError(
                f"This library's photos were indexed with {stored}; it cannot use {spec.name} without "
                f"re-embedding every photo ('clipdesk index --reembed --model {spec.name.split('+')[0]}').")
        with self._guard:
            old, self._encoder = self._encoder, None
            self.spec = self._requested = spec
            self._store = None if not self.catalog.vector_count() else self._store
        if old is not None and hasattr(old, "close"):
            old.close()

    # --- library care
    def refresh(self, paths: Sequence[str], progress: ProgressFn | None = None,
                cancel: CancelToken | None = None, batch_size: int = 32) -> IndexReport:
        """Bring only some parts of the library's folders up to date: new, changed, moved and
        deleted photos under ``paths`` (files or folders), which are not registered as folders.
        What a file watcher calls instead of a rescan of everything.

        Paths outside every library folder are ignored; a path that no longer exists stands for
        its nearest existing folder inside the library, so its deletion is seen.
        """
        from clipdesk.indexer.scan import is_inside, outermost

        folders = self.catalog.folders()
        roots = []
        for p in paths:
            p = os.path.abspath(p)
            owner = next((f for f in folders if is_inside(p, f)), None)
            if owner is None:
                continue
            while p != owner and not os.path.exists(p):
                p = os.path.dirname(p)
            roots.append(p)
        roots = outermost(roots)
        if not roots:
            return IndexReport()
        if not self.catalog.get_meta("model") or self.catalog.vector_count() == 0:
            return self.index(progress=progress, cancel=cancel, batch_size=batch_size)  # sets the model up
        with self.writing():
            self.check_model()
            report = index_files(self.catalog, self.vectors, _LazyEmbedder(self), roots, batch_size=batch_size,
                                 progress=progress, cancel=cancel, checkpoint=self._save_store)
            self._resize_store_if_needed()
            return report

    def find_duplicates(self, threshold: float | None = None, folder: str | None = None,
                        progress: ProgressFn | None = None, cancel: CancelToken | None = None):
        """Groups of exact and near-duplicate photos (see ``clipdesk.duplicates``)."""
        from clipdesk.duplicates import find_duplicates

        return find_duplicates(self, threshold, folder, progress=progress, cancel=cancel)

    def trash_duplicates(self, group, keep: str | None = None):
        """Move a duplicate group's other photos to the Trash, keeping ``keep`` (default: the
        suggested one); their labels move to the kept photo (see ``clipdesk.duplicates``)."""
        from clipdesk.duplicates import trash_others

        return trash_others(self, group, keep)


class _LazyEmbedder:
    """The library's encoder, loaded on first use (thread-safe through ``Library.encoder``)."""

    def __init__(self, lib: Library):
        self._lib = lib

    @property
    def min_side(self) -> int:
        return self._lib.encoder.min_side

    @property
    def device(self) -> str:  # a CUDA model decodes JPEGs on the GPU (indexer/gpu_decode.py)
        return self._lib.encoder.device

    @property
    def preprocess(self):
        return self._lib.encoder.preprocess

    def prepare(self, image):
        return self._lib.encoder.prepare(image)

    def embed(self, prepared):
        return self._lib.encoder.embed(prepared)


def repair_library(folder: str | None = None) -> dict:
    """Check a library's catalog and, if it is damaged, salvage every readable row into a fresh one.

    The damaged file is kept beside it (``catalog.sqlite.damaged-TIMESTAMP``); the vector index is
    rebuilt from the salvaged catalog on next open. Photos are never touched.
    """
    from clipdesk.errors import LibraryNotFoundError
    from clipdesk.indexer.catalog import integrity_problems, salvage

    folder = os.path.abspath(os.path.expanduser(folder or default_library_folder()))
    path = os.path.join(folder, Catalog.FILENAME)
    if not os.path.exists(path):
        raise LibraryNotFoundError(f"No catalog at {path}.")
    foreign = _foreign_tables(path)
    if foreign:  # another program's database: not ours to rewrite
        from clipdesk.errors import CatalogCorruptError

        raise CatalogCorruptError(
            f"{path} is not a clipdesk catalog (it is an SQLite database with the tables "
            f"{', '.join(foreign[:5])}); repair leaves it alone. Use another library folder, or move that file away.")
    check_library_entry(path)
    if not folder_writable(folder):  # read-only storage: check, but a repair cannot be written
        problems = integrity_problems(path)
        if not problems:
            return {"catalog": path, "status": "ok", "problems": []}
        from clipdesk.indexer.errors import LibraryReadOnlyError

        raise LibraryReadOnlyError(
            f"The catalog {path} is damaged ({problems[0]}) and the library is read-only: copy the "
            "library folder to writable storage and run 'clipdesk repair' there.")
    with LibraryLock(folder):
        empty = os.path.isfile(path) and os.path.getsize(path) == 0
        problems = ["the catalog is empty (0 bytes)"] if empty else integrity_problems(path)
        if not problems:
            return {"catalog": path, "status": "ok", "problems": []}
        damaged = f"{path}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
        for suffix in ("", "-wal", "-shm"):  # keep the WAL with its database, it may hold rows
            if os.path.exists(path + suffix):
                os.replace(path + suffix, damaged + suffix)
        recovered = salvage(damaged, folder)
        for name in (Library.VECTORS, Library.VECFILE):
            try:
                os.unlink(os.path.join(folder, name))
            except FileNotFoundError:
                pass
        return {"catalog": path, "status": "repaired", "problems": problems[:10],
                "damaged_copy": damaged, "recovered": recovered}


def _some(paths: Sequence[str], shown: int = 5) -> str:
    """Paths for a one-line message: the first few, then how many more."""
    more = len(paths) - shown
    return ", ".join(paths[:shown]) + (f" and {more} more" if more > 0 else "")


def _stable_seed(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def _check_name(name: str, what: str) -> str:
    name = (name or "").strip()
    if not _PROBE_NAME.match(name):
        raise ClipdeskError(f"Invalid {what} name '{name}': use letters, digits, spaces, '.', '+', '-' or '_'.")
    return name


def search_without_twins(lib: Library, query, k: int = 20, **filters) -> list[SearchResult]:
    """``lib.search`` with each RAW + JPEG pair (``IMG_0001.CR2`` + ``IMG_0001.JPG``) shown once,
    at its best rank. Twins collapse two results into one at most, so ``2 * k`` are fetched."""
    from clipdesk.indexer.formats import collapse_twins

    return collapse_twins(lib.search(query, 2 * k, **filters))[:k]
