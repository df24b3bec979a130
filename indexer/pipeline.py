"""The incremental indexing pipeline: scan, diff against the catalog, decode in parallel, embed, commit.

Written once as plain Python that reports progress through a callback and checks a cancel token
between batches; the CLI drives it with a tqdm bar, the GUI from a worker thread.

- Unchanged files (same size and modification time) are skipped; changed ones are re-embedded.
- A file that vanished while a new file with the same content fingerprint appeared is a move:
  the row (its vector and labels) follows the file. Identical files moved together are paired by
  file name, then by inode number, so they never trade labels or dates.
- Files that vanished are removed; a root folder that is missing altogether (an unplugged drive)
  is reported and its images are kept.
- Decoding runs in a thread pool a few batches ahead of the model (Pillow releases the GIL),
  within a shared pixel budget, so huge images are decoded one at a time.
- Each batch is one catalog transaction, so a kill at any moment loses at most the batch in
  flight, and the next run resumes where this one stopped.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from . import gpu_decode
from .catalog import Catalog, Failure, FileState, ImageRecord
from .decode import PixelBudget, decode_image, file_hash
from .errors import UnreadableImageError
from .scan import ScannedFile, ScanProblem, fold_int64, is_inside, is_library_folder, outermost, scan
from .vectors import VectorStore


class ImageEmbedder(Protocol):
    """What the pipeline needs of a model (the clipdesk core's encoder provides it)."""

    min_side: int  # decoders may reduce images to no less than this on the shorter side

    def prepare(self, image: Image.Image) -> Any:
        """Turn one decoded RGB image into model input. Called from decoder threads."""

    def embed(self, prepared: list[Any]) -> np.ndarray:
        """Embed a batch of prepared inputs: (n, dim) float32, L2-normalised."""


class Cancelled(Exception):
    """Raised inside long jobs when their :class:`CancelToken` is set."""


class CancelToken:
    """A flag a long job checks between batches; set from any thread."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled()


@dataclass(frozen=True)
class Progress:
    stage: str  # "scan", "embed" or "done"
    done: int
    total: int
    failed: int = 0
    rate: float = 0.0  # images per second
    eta: float | None = None  # seconds left
    path: str | None = None


@dataclass
class IndexReport:
    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    seconds: float = 0.0
    cancelled: bool = False
    failures: list[Failure] = field(default_factory=list)
    problems: list[ScanProblem] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in
                ("added", "updated", "moved", "removed", "unchanged", "failed", "seconds")}


@dataclass(frozen=True)
class _Decoded:
    file: ScannedFile
    prepared: Any = None
    record: dict | None = None
    failure: str | None = None


@dataclass(frozen=True)
class Embedded:
    """One file of the work list after decoding and embedding: ``vector`` and ``record``, or ``failure``."""

    file: ScannedFile
    vector: np.ndarray | None = None  # (dim,) float32, L2-normalised
    record: dict | None = None  # hash, width, height, taken: the catalog fields decoding found
    failure: str | None = None


class EmbedEngine(Protocol):
    """Where the work list is decoded and embedded: in this process (the default) or elsewhere (a
    cluster, :mod:`clipdesk.cluster`). Batches come back in any order; the pipeline commits each one."""

    def __call__(self, files: list[ScannedFile], batch_size: int) -> Iterator[list[Embedded]]:
        """Yield every file of ``files`` once, in batches of about ``batch_size``. Closing the
        iterator stops the work."""


def _decode_one(file: ScannedFile, embedder: ImageEmbedder, budget: PixelBudget) -> _Decoded:
    try:
        # Streamed (never the whole file in memory); the full-size image lives only within the
        # budget's hold, until it is prepared (resized) for the model.
        with budget.hold() as reserve:
            img = decode_image(file.path, embedder.min_side, reserve=reserve)
            prepared = embedder.prepare(img.image)
            taken = img.taken if img.taken is not None else file.mtime
            record = dict(hash=img.content_hash, width=img.width, height=img.height, taken=taken)
            del img
    except UnreadableImageError as e:
        return _Decoded(file, failure=e.reason)
    except Exception as e:  # noqa: BLE001 - one odd file must not stop a library scan
        return _Decoded(file, failure=f"unexpected error while decoding ({type(e).__name__}: {e})")
    return _Decoded(file, prepared, record)


def embed_locally(files: Sequence[ScannedFile], embedder: ImageEmbedder, batch_size: int = 32,
                  workers: int | None = None, prefetch_batches: int = 3,
                  budget: PixelBudget | None = None) -> Iterator[list[Embedded]]:
    """Decode ``files`` ahead in a thread pool (Pillow releases the GIL) within a shared pixel
    budget, embed them batch by batch. The local engine, and what each cluster worker runs.
    When the model runs on CUDA, the GPU decodes JPEGs beside the threads (:mod:`gpu_decode`);
    without CUDA nothing changes. ``budget``: one shared by calls running at once (a cluster
    worker's), else a new one."""
    budget = budget or PixelBudget()  # memory bound of decoding, whatever the number of workers
    workers = workers or max(1, os.cpu_count() or 1)
    # The one branch between CPU decoding and GPU decoding beside it (None without CUDA).
    hybrid = gpu_decode.for_embedder(embedder, workers) if files else None
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clipdesk-decode") as pool, \
            (hybrid or nullcontext()):
        pending: deque[Future[_Decoded]] = deque()
        it = iter(files)
        window = batch_size * prefetch_batches

        def submit(f: ScannedFile) -> Future[_Decoded]:
            return pool.submit(_decode_one, f, embedder, budget)

        if hybrid is not None:  # routes each file to the CPU (``submit``) or the GPU
            submit = hybrid.bind(submit, _Decoded).submit
            window = max(window, hybrid.window)

        def refill() -> None:
            while len(pending) < window:
                f = next(it, None)
                if f is None:
                    return
                pending.append(submit(f))

        refill()
        try:
            while pending:
                batch: list[_Decoded] = []
                while pending and len(batch) < batch_size:
                    batch.append(pending.popleft().result())
                    refill()
                ok = [d for d in batch if d.failure is None]
                vectors = iter(embedder.embed([d.prepared for d in ok]) if ok else ())
                yield [Embedded(d.file, failure=d.failure) if d.failure is not None
                       else Embedded(d.file, next(vectors), d.record) for d in batch]
        finally:
            for fut in pending:
                fut.cancel()


def _stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(is_inside(path, r) for r in roots)


def _pair_moves(olds: list[tuple[str, FileState]], news: list[ScannedFile]
                ) -> list[tuple[str, FileState, ScannedFile]]:
    """Pair vanished rows with appeared files of the same content: ``(old path, row, new file)``.

    Identical files (copies of one photo) must keep their own rows, labels and dates: pairs with
    the same file name and inode come first, then the same name, then the same inode; a single
    leftover of each side is a rename. Leftovers beyond that are paired in name order.
    """
    olds = sorted(olds, key=lambda o: o[0])
    news = sorted(news, key=lambda n: n.path)
    pairs: list[tuple[str, FileState, ScannedFile]] = []

    def same_name(o, n) -> bool:
        return os.path.basename(o[0]) == os.path.basename(n.path)

    def same_inode(o, n) -> bool:
        return bool(o[1].ino) and o[1].ino == fold_int64(n.ino)

    for rule in (lambda o, n: same_name(o, n) and same_inode(o, n), same_name, same_inode,
                 lambda o, n: True):
        for n in list(news):
            o = next((o for o in olds if rule(o, n)), None)
            if o is not None:
                pairs.append((o[0], o[1], n))
                olds.remove(o)
                news.remove(n)
    return pairs


def index_files(
    catalog: Catalog,
    store: VectorStore,
    embedder: ImageEmbedder,
    roots: Sequence[str],
    *,
    batch_size: int = 32,
    workers: int | None = None,
    prefetch_batches: int = 3,
    progress: Callable[[Progress], None] | None = None,
    cancel: CancelToken | None = None,
    checkpoint: Callable[[], None] | None = None,
    checkpoint_every: float = 60.0,
    exclude: Sequence[str] = (),
    engine: EmbedEngine | None = None,
) -> IndexReport:
    """Bring the catalog and ``store`` up to date with the image files under ``roots``.

    ``checkpoint`` is called every ``checkpoint_every`` seconds and at the end, to persist the
    vector store. Cancelling stops after the batch in flight; everything committed stays.
    Folders in ``exclude`` (the library's own folder) are never indexed, nor is any folder that
    holds a clipdesk library. ``engine`` decodes and embeds the work list elsewhere (a cluster);
    scanning, the diff and every commit stay here, so its library is the local one.
    """
    t0 = time.perf_counter()
    report = IndexReport()
    notify = progress or (lambda _p: None)
    cancel = cancel or CancelToken()
    # A root inside another root is scanned as part of the outer one (once, without warnings).
    roots = outermost(os.path.abspath(os.path.expanduser(r)) for r in roots)

    # 1. Scan. Missing roots keep their images: a drive that is not plugged in is not a deletion.
    # Nor is a root that turned out to hold a library (its own folder, or another one's): it is
    # not scanned, and its images are kept.
    excluded = {(st.st_dev, st.st_ino) for st in map(_stat_or_none, exclude) if st is not None}
    present_roots = []
    for r in roots:
        st = _stat_or_none(r)
        if st is None:
            report.problems.append(ScanProblem(r, "folder not found; its photos stay in the library"))
        elif os.path.isdir(r) and ((st.st_dev, st.st_ino) in excluded or is_library_folder(r)):
            report.problems.append(ScanProblem(
                r, "holds a clipdesk library, so it is not scanned; its photos stay in the library"))
        else:
            present_roots.append(r)
    scanned: dict[str, ScannedFile] = {}
    scan_failures: list[Failure] = []

    def on_problem(p: ScanProblem) -> None:
        report.problems.append(p)

    for f in scan(present_roots, on_problem=on_problem, exclude=exclude):
        scanned[f.path] = f
        if len(scanned) % 1000 == 0:
            notify(Progress("scan", len(scanned), 0))
        if cancel.cancelled:
            break
    if cancel.cancelled:
        report.cancelled = True
        report.seconds = time.perf_counter() - t0
        return report

    # 2. Diff against the catalog.
    states = catalog.file_states()
    todo: list[ScannedFile] = []
    new: list[ScannedFile] = []
    unstamped: list[tuple[int, int]] = []
    for path, f in scanned.items():
        st = states.get(path)
        if st is None:
            new.append(f)
        elif st.size == f.size and st.mtime_ns == f.stamp:
            report.unchanged += 1
            if not st.ino and f.ino:  # a row from before inode numbers were recorded
                unstamped.append((st.id, f.ino))
        else:
            todo.append(f)
    missing = {p: st for p, st in states.items() if p not in scanned and _under(p, present_roots)}
    # Image files the scan could not stat (broken links, permissions) are failures of those paths.
    for p in report.problems:
        if not p.is_file:
            continue
        missing.pop(p.path, None)
        st = states.get(p.path)
        if st is not None and st.failed:
            report.unchanged += 1
        else:
            scan_failures.append(Failure(p.path, p.reason))

    # 3. Moves: a vanished file whose fingerprint reappears under a new name keeps its row.
    moves: list[tuple[int, str, int, int, int]] = []
    old_by_hash: dict[str, list[tuple[str, FileState]]] = {}
    for p, st in missing.items():
        if not st.failed and st.hash:
            old_by_hash.setdefault(st.hash, []).append((p, st))
    if old_by_hash:
        sizes = {st.size for olds in old_by_hash.values() for _, st in olds}
        new_by_hash: dict[str, list[ScannedFile]] = {}
        for f in new:
            if f.size in sizes:
                try:
                    h = file_hash(f.path)
                except OSError:
                    continue
                if h in old_by_hash:
                    new_by_hash.setdefault(h, []).append(f)
        moved: set[str] = set()
        for h, files in new_by_hash.items():
            for old_path, st, f in _pair_moves(old_by_hash[h], files):
                moves.append((st.id, f.path, f.size, f.stamp, f.ino))
                del missing[old_path]
                moved.add(f.path)
        new = [f for f in new if f.path not in moved]
    delete_ids = [st.id for st in missing.values()]
    if unstamped:
        catalog.set_inodes(unstamped)
    if moves or delete_ids or scan_failures:
        with store.lock:
            store.generation, _, _ = catalog.write_batch(failures=scan_failures, delete_ids=delete_ids, moves=moves)
            store.remove(delete_ids)
    report.moved = len(moves)
    report.removed = len(delete_ids)
    report.failed += len(scan_failures)
    report.failures.extend(scan_failures)

    # 4. Decode and embed (ahead, in threads; or on a cluster), commit batch by batch.
    new_paths = {f.path for f in new}
    todo = new + todo
    total = len(todo)
    notify(Progress("embed", 0, total))
    if engine is None:
        batches = embed_locally(todo, embedder, batch_size, workers, prefetch_batches)
    else:
        batches = engine(todo, batch_size)
    last_checkpoint = time.perf_counter()
    t_embed = time.perf_counter()
    done = 0
    with closing(batches):  # stops the decoders (or the cluster job) however the loop ends
        for batch in batches:
            if cancel.cancelled:
                report.cancelled = True
                break
            if not batch:
                continue
            ok = [e for e in batch if e.failure is None]
            bad = [e for e in batch if e.failure is not None]
            vectors = (np.stack([e.vector for e in ok]).astype(np.float32, copy=False) if ok
                       else np.zeros((0, store.dim), np.float32))
            records = [ImageRecord(e.file.path, e.file.size, e.file.stamp, vector=v, ino=e.file.ino, **e.record)
                       for e, v in zip(ok, vectors)]
            failures = [Failure(e.file.path, e.failure, e.file.size, e.file.stamp, e.file.ino) for e in bad]
            with store.lock:  # the catalog and the index move together
                store.generation, ids, replaced = catalog.write_batch(records, failures)
                store.remove(replaced)
                store.add(np.asarray(ids, dtype=np.int64), vectors)
            for e in ok:
                if e.file.path in new_paths:
                    report.added += 1
                else:
                    report.updated += 1
            report.failed += len(bad)
            report.failures.extend(failures)
            done += len(batch)
            elapsed = time.perf_counter() - t_embed
            rate = done / elapsed if elapsed > 0 else 0.0
            notify(Progress("embed", done, total, report.failed, rate,
                            (total - done) / rate if rate > 0 else None, batch[-1].file.path))
            if checkpoint and time.perf_counter() - last_checkpoint > checkpoint_every:
                checkpoint()
                last_checkpoint = time.perf_counter()
            if cancel.cancelled and done < total:
                report.cancelled = True
                break
    if checkpoint:
        checkpoint()
    report.seconds = time.perf_counter() - t0
    notify(Progress("done", done, total, report.failed))
    return report
