"""A library that keeps itself current: watch its folders and index what changes, no rescans.

:class:`LibraryWatcher` listens to file-system events (``watchdog``: inotify, FSEvents,
ReadDirectoryChangesW) on every folder of a library. Events only mark places as changed; a
worker thread waits until they have been quiet for ``debounce`` seconds (or, during a long copy,
at most ``max_delay`` seconds), then hands the changed places to the normal incremental indexer
(:meth:`Library.refresh`): new and changed photos are embedded, moved ones keep their row and
labels, deleted ones leave the library.

- A created or changed file is refreshed on its own (no folder walk); a deletion or a move needs
  its folder (that is where the indexer looks for what vanished and where it went).
- What is pending is bounded (``MAX_PENDING`` places, then collapsed into their folders), so a
  storm of events, a whole memory card copied in, costs constant memory.
- Folders that deliver no events (network shares: NFS, SMB, sshfs…; or when the system's watch
  limit is reached) get a periodic light rescan instead (a folder walk comparing sizes and
  dates; only what changed is decoded). A folder that is missing (an unplugged drive) is
  looked for at the same period and watched again once it is back.
- The library's own folder is ignored (its catalog changes with every batch), as are hidden
  files and folders and files that are not photos.

The watcher never prints: every batch, error or mode change goes to ``on_update`` (called from
the worker thread; the GUI posts it to its own thread). ``stop()`` cancels the batch in flight
after its current step and joins every thread.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from clipdesk.errors import ClipdeskError
from clipdesk.indexer.decode import supported_extensions
from clipdesk.indexer.pipeline import Cancelled, CancelToken, IndexReport
from clipdesk.indexer.scan import is_inside, outermost

MAX_PENDING = 2000  # changed places kept individually before they are collapsed into folders
MAX_ROOTS = 32  # places handed to one refresh (the indexer compares every row with each)
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs",
    "davfs", "fuse.sshfs", "sshfs", "fuse.rclone", "fuse.gvfsd-fuse", "fuse.s3fs", "fuse.smbnetfs",
    "fuse.davfs2", "fuse.glusterfs", "fuse.cephfs", "lustre", "gpfs", "beegfs", "orangefs",
})


@dataclass(frozen=True)
class WatchUpdate:
    """One thing the watcher did: a refresh of some places, a light rescan, an error, a mode."""

    kind: str  # "refresh", "rescan", "error", "mode" or "auto" (what the auto categories did)
    roots: list[str] = field(default_factory=list)
    report: IndexReport | None = None
    message: str = ""

    def as_dict(self) -> dict:
        d = {"kind": self.kind, "roots": self.roots, "message": self.message}
        if self.report is not None:
            d["report"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.report.as_dict().items()}
        return d


class LibraryWatcher:
    """Keeps ``library`` current while started. ``start()``/``stop()``, or use it as a context.

    ``poll_interval``: seconds between light rescans of folders that deliver no events (and
    between looks for a missing folder). ``force_poll``: rescan every folder periodically
    instead of listening for events (for file systems whose events cannot be trusted).
    ``catch_up``: first bring every folder up to date (what changed while nothing watched).
    """

    def __init__(self, library, on_update: Callable[[WatchUpdate], None] | None = None,
                 debounce: float = 1.0, max_delay: float = 10.0, poll_interval: float = 120.0,
                 force_poll: bool = False, catch_up: bool = False, retry_delay: float = 5.0,
                 after_batch: Callable[[], str] | None = None):
        self.library = library
        # run after every batch that indexed something (clipdesk.ops.auto: the categories that keep
        # applying); its message is an "auto" update, its ClipdeskError an "error" one
        self.after_batch = after_batch
        self.on_update = on_update or (lambda _u: None)
        self.debounce = debounce
        self.max_delay = max_delay
        self.poll_interval = poll_interval
        self.force_poll = force_poll
        self.catch_up = catch_up
        self.retry_delay = retry_delay
        self._exts = supported_extensions()
        self._library_folder = os.path.realpath(library.folder)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._idle = threading.Event()
        self._cancel = CancelToken()
        self._pending: set[str] = set()
        self._first_event = 0.0
        self._last_event = 0.0
        self._not_before = 0.0  # retry pause after a failed refresh
        self._modes: dict[str, str] = {}
        self._next_poll: dict[str, float] = {}
        self._observer = None
        self._watches: dict[str, object] = {}  # folder -> watchdog's ObservedWatch
        self._worker: threading.Thread | None = None
        self.events_seen = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LibraryWatcher:
        if self._worker is not None:
            return self
        from watchdog.observers import Observer

        self._stopping.clear()
        self._cancel = CancelToken()
        self._observer = Observer()
        self._observer.daemon = True
        # The kernel drops events when its queue overflows (a huge copy on a slow machine);
        # watchdog only logs it. Lost events mean a rescan of the folders that rely on events.
        self._overflow = _OverflowListener(self._on_overflow)
        logging.getLogger("watchdog").addHandler(self._overflow)
        # The observer first, then each folder: scheduling on a running observer adds the
        # folder's inotify watches before it returns, so a folder's mode says "events" only once
        # events really flow (a photo copied in just after would otherwise be missed).
        self._observer.start()
        for folder in self.library.catalog.folders():
            self._watch(folder)
        self._worker = threading.Thread(target=self._run, name="clipdesk-watcher", daemon=True)
        self._worker.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop listening, cancel the batch in flight, and join the threads."""
        self._stopping.set()
        self._cancel.cancel()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout)
            self._worker = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout)
            self._observer = None
            self._watches.clear()
            logging.getLogger("watchdog").removeHandler(self._overflow)

    def __enter__(self) -> LibraryWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def modes(self) -> dict[str, str]:
        """Each library folder's mode: "events", "poll" (light rescans) or "missing"."""
        with self._lock:
            return dict(self._modes)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is pending or being indexed (True), or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                quiet = not self._pending
            if quiet and self._idle.wait(0.05):
                with self._lock:
                    if not self._pending:
                        return True
            time.sleep(0.05)
        return False

    def add_folder(self, folder: str) -> None:
        """Watch a folder added to the library while the watcher runs."""
        self._watch(folder)
        self._mark([folder])

    def remove_folder(self, folder: str) -> None:
        """Stop watching a folder removed from the library (what is pending under it is dropped)."""
        watch = self._watches.pop(folder, None)
        if watch is not None and self._observer is not None:
            try:
                self._observer.unschedule(watch)
            except (KeyError, OSError):
                pass  # already gone with its folder
        with self._lock:
            self._modes.pop(folder, None)
            self._next_poll.pop(folder, None)
            self._pending = {p for p in self._pending if not is_inside(p, folder)}

    def sync_folders(self) -> tuple[list[str], list[str]]:
        """Watch the library's folders as they are now; returns ``(added, removed)``."""
        now = set(self.library.catalog.folders())
        known = set(self.modes)
        for f in sorted(known - now):
            self.remove_folder(f)
        for f in sorted(now - known):
            self.add_folder(f)
        return sorted(now - known), sorted(known - now)

    # ------------------------------------------------------------------ watching
    def _watch(self, folder: str) -> None:
        from watchdog.events import FileSystemEventHandler

        mode = "events"
        if not os.path.isdir(folder):
            mode = "missing"
        elif self.force_poll or filesystem_type(folder) in NETWORK_FILESYSTEMS:
            mode = "poll"
        else:
            watcher = self

            class Handler(FileSystemEventHandler):
                def on_any_event(self, event) -> None:
                    watcher._on_event(event)

            try:
                self._watches[folder] = self._observer.schedule(Handler(), folder, recursive=True)
            except OSError as e:  # e.g. the system's limit of watches reached
                mode = "poll"
                self.on_update(WatchUpdate("mode", [folder], message=f"{folder}: no file events ({e}); "
                                           "rescanning it periodically instead"))
        with self._lock:
            self._modes[folder] = mode
            self._next_poll[folder] = time.monotonic() + self.poll_interval
        self.on_update(WatchUpdate("mode", [folder], message=f"{folder}: {mode}"))

    def _on_event(self, event) -> None:
        """Called on watchdog's thread for every event: only marks places, never blocks."""
        kind = event.event_type
        if kind in ("opened", "closed_no_write") or (event.is_directory and kind == "modified"):
            return  # a folder's "modified" only echoes the events of its files
        self.events_seen += 1
        places = []
        for path, exists in ((os.fsdecode(event.src_path), kind not in ("deleted", "moved")),
                             (os.fsdecode(getattr(event, "dest_path", "") or ""), True)):
            if not path or self._ignored(path, event.is_directory):
                continue
            # Something that appeared is refreshed by itself; what vanished needs its folder,
            # where the indexer sees it gone (or moved: the new place is in the same batch).
            places.append(path if exists else os.path.dirname(path))
        if places:
            self._mark(places)

    def _on_overflow(self) -> None:
        self._mark([f for f, m in self.modes.items() if m == "events"])
        self.on_update(WatchUpdate("mode", message="file events were lost (the system's queue overflowed); "
                                   "rescanning the watched folders"))

    def _ignored(self, path: str, is_dir: bool) -> bool:
        if is_inside(path, self._library_folder) or is_inside(path, self.library.folder):
            return True  # the library's own files: the catalog changes with every batch
        owner = next((f for f in self.modes if is_inside(path, f)), None)
        below = path[len(owner):] if owner else os.path.basename(path)
        if any(part.startswith(".") for part in below.split(os.sep)):
            return True  # hidden files and folders are not indexed (nor a copier's temporary files)
        return not is_dir and os.path.splitext(path)[1].lower() not in self._exts

    def _mark(self, places: Iterable[str]) -> None:
        now = time.monotonic()
        with self._lock:
            if not self._pending:
                self._first_event = now
            self._last_event = now
            self._pending.update(places)
            if len(self._pending) > MAX_PENDING:
                self._pending = set(collapse(self._pending, MAX_ROOTS, self._modes))
            self._idle.clear()
        self._wake.set()

    # ------------------------------------------------------------------ the worker
    def _run(self) -> None:
        if self.catch_up:
            self._refresh(self.library.catalog.folders(), "rescan")
        while not self._stopping.is_set():
            batch, polls, wait = self._due()
            if batch:
                self._refresh(batch, "refresh")
            for folder in polls:
                self._poll(folder)
            if not batch and not polls:
                with self._lock:
                    if not self._pending:
                        self._idle.set()
                self._wake.wait(wait)
                self._wake.clear()

    def _due(self) -> tuple[list[str], list[str], float]:
        """(places to refresh now, folders to rescan now, seconds until something is due)."""
        now = time.monotonic()
        with self._lock:
            batch: list[str] = []
            wait = self.poll_interval
            if self._pending:
                due = max(self._not_before, min(self._last_event + self.debounce, self._first_event + self.max_delay))
                if now >= due:
                    batch, self._pending = list(self._pending), set()
                else:
                    wait = min(wait, due - now)
            polls = [f for f, m in self._modes.items() if m != "events" and now >= self._next_poll[f]]
            for f in polls:
                self._next_poll[f] = now + self.poll_interval
            for f, m in self._modes.items():
                if m != "events":
                    wait = min(wait, max(0.0, self._next_poll[f] - now))
        return batch, polls, max(0.01, wait)

    def _poll(self, folder: str) -> None:
        if self.modes.get(folder) == "missing":
            if not os.path.isdir(folder):
                return
            self._watch(folder)  # back (a drive plugged in again): watch it, then catch up
        self._refresh([folder], "rescan")

    def _refresh(self, places: list[str], kind: str) -> None:
        roots = collapse(places, MAX_ROOTS, self.modes)
        try:
            report = self.library.refresh(roots, cancel=self._cancel)
        except Cancelled:
            return
        except ClipdeskError as e:  # locked by another writer, disk full…: keep the work, retry later
            with self._lock:
                if not self._pending:
                    self._first_event = self._last_event = time.monotonic()
                self._pending.update(places)
                if len(self._pending) > MAX_PENDING:
                    self._pending = set(collapse(self._pending, MAX_ROOTS, self._modes))
                self._not_before = time.monotonic() + self.retry_delay
            self.on_update(WatchUpdate("error", roots, message=str(e)))
            return
        except Exception as e:  # noqa: BLE001 - a bug must not silently end the watching thread
            self.on_update(WatchUpdate("error", roots, message=f"internal error: {type(e).__name__}: {e}"))
            return
        if report.cancelled:
            return
        self.on_update(WatchUpdate(kind, roots, report))
        if self.after_batch is not None and (report.added or report.updated or report.moved):
            try:
                message = self.after_batch()
            except ClipdeskError as e:
                self.on_update(WatchUpdate("error", roots, message=str(e)))
            except Exception as e:  # noqa: BLE001 - a bug must not silently end the watching thread
                self.on_update(WatchUpdate("error", roots, message=f"internal error: {type(e).__name__}: {e}"))
            else:
                if message:
                    self.on_update(WatchUpdate("auto", roots, message=message))


class _OverflowListener(logging.Handler):
    """Calls back when watchdog reports that the kernel's event queue overflowed."""

    def __init__(self, callback: Callable[[], None]):
        super().__init__(logging.WARNING)
        self._callback = callback

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._callback()


def collapse(places: Iterable[str], limit: int, folders: Iterable[str]) -> list[str]:
    """At most ``limit`` places covering ``places``: nested ones dropped, then the deepest
    replaced by their folders until few enough remain (the indexer then walks those folders).
    Never above the library ``folders`` they belong to."""
    folders = list(folders)
    current = outermost(sorted(set(places)))
    while len(current) > limit:
        movable = [p for p in current if p not in folders and any(is_inside(p, f) for f in folders)]
        if not movable:
            break
        depth = max(p.count(os.sep) for p in movable)
        current = outermost(sorted({os.path.dirname(p) if p in movable and p.count(os.sep) == depth else p
                                    for p in current}))
    return current


def filesystem_type(path: str) -> str:
    """The type of the file system holding ``path`` ("ext4", "nfs4", "fuse.sshfs"…; "" if unknown)."""
    path = os.path.realpath(path)
    best, kind = "", ""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1].replace("\\040", " ")
                if is_inside(path, mount) and len(mount) >= len(best):
                    best, kind = mount, parts[2]
    except OSError:
        return ""  # not Linux: watchdog's native backend is trusted
    return kind
