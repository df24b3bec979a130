"""Watching the library's folders while the app runs: new, changed, moved and deleted photos show
up within seconds, with no rescan.

``FolderWatch`` owns a ``clipdesk.ops.watch.LibraryWatcher`` (watchdog's threads plus its own worker,
which batches events into ``Library.refresh``). Starting, following added or removed folders and
stopping happen on one helper thread (adding inotify watches walks the folder tree; the GUI never
waits on it, except for the final stop when the window closes). The watcher's updates arrive on
its worker thread and are posted to the GUI thread through a queued signal. Its writes take turns
with the app's own jobs (``Library.writing`` serialises writer threads), so an indexing job and a
watcher batch never write at once. The toggle ("Watch folders", a QSettings value, default on) is
a check box in the status bar.

After each batch that indexed something, the categories that keep applying run on the new photos
(``clipdesk.ops.auto.run``, as ``clipdesk watch`` does) on the watcher's own worker thread, so the app
never waits on them; their reports come to the GUI thread as ``auto_ran`` and a status line
("12 new photos: 5 tagged Beach, 3 in the Inbox").
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from PySide6.QtCore import QObject, QSettings, Qt, Signal
from PySide6.QtWidgets import QCheckBox

from clipdesk.ops.watch import LibraryWatcher, WatchUpdate

from .actions import _plural
from .context import Context

SETTING = "watch_folders"
DEBOUNCE = 1.0  # seconds of quiet before a batch is indexed
MAX_DELAY = 5.0  # during a long copy, a batch at least this often


def describe_auto(reports) -> str:
    """"12 new photos: 5 tagged Beach, 3 in the Inbox" — what an auto-apply run did ("" for nothing)."""
    photos = sum(r.photos for r in reports)
    parts = []
    for r in reports:
        verb = "tagged" if r.tags_operation else "sorted as" if r.sort_operation else "labelled"
        parts += [f"{n:,} {r.verbs.get(cat, verb)} {cat}" for cat, n in r.applied.items()]  # per category's actions
    inbox = sum(r.inbox for r in reports)
    if inbox:
        parts.append(f"{inbox:,} in the Inbox")
    problems = [p for r in reports for p in r.problems]
    text = f"{_plural(photos, 'new photo')}: {', '.join(parts) or 'nothing applied'}" if photos else ""
    if problems:
        text += ("; " if text else "") + f"auto-apply: {problems[0]}" + (
            f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "")
    return text


def describe(report) -> str:
    """"3 new photos, 1 removed" — what a watcher batch changed ("" when nothing did)."""
    parts = []
    if report.added:
        parts.append(f"{_plural(report.added, 'new photo')}")
    for n, what in ((report.updated, "changed"), (report.moved, "moved"), (report.removed, "removed")):
        if n:
            parts.append(f"{n:,} {what}" if parts else f"{_plural(n, 'photo')} {what}")
    if report.failed:
        parts.append(f"{report.failed:,} unreadable")
    return ", ".join(parts)


class FolderWatch(QObject):
    changed = Signal()  # photos appeared, changed or left: the views refresh
    message = Signal(str)  # a short status line ("3 new photos")
    auto_ran = Signal(object)  # list of clipdesk.ops.auto.RunReport, after a batch the auto categories ran on
    _update = Signal(object)  # from the watcher's thread to the GUI thread
    _auto = Signal(object)

    def __init__(self, ctx: Context, settings: QSettings, parent: QObject | None = None,
                 debounce: float = DEBOUNCE) -> None:
        super().__init__(parent)
        self.ctx, self.settings, self.debounce = ctx, settings, debounce
        self.watcher: LibraryWatcher | None = None
        self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipdesk-watch-control")
        self._closed = False
        self._last_error = ""  # a failing batch is retried every few seconds: said once
        self.toggle = QCheckBox("Watch folders")
        self.toggle.setObjectName("watchFolders")
        self.toggle.setToolTip("Watch folders for changes: new, changed, moved and deleted photos appear "
                               "within seconds without a rescan")
        self.toggle.setChecked(self.enabled)
        self.toggle.toggled.connect(self.set_enabled)
        self._update.connect(self._on_update, Qt.ConnectionType.QueuedConnection)
        self._auto.connect(self._on_auto, Qt.ConnectionType.QueuedConnection)

    @property
    def enabled(self) -> bool:
        value = self.settings.value(SETTING, True)
        return value not in (False, "false", "0", 0)

    def set_enabled(self, on: bool) -> None:
        self.settings.setValue(SETTING, bool(on))
        if self.toggle.isChecked() != on:
            self.toggle.setChecked(on)
        if on:
            self.sync()
            self.message.emit("Watching the library's folders for changes.")
        else:
            self.stop(wait=False)
            self.message.emit("No longer watching folders: rescan (Folders ▸ Rescan) to catch up.")

    @property
    def running(self) -> bool:
        return self.watcher is not None

    # ------------------------------------------------------------------ lifecycle
    def sync(self) -> None:
        """Start watching (when enabled and the library has folders), or follow its folders."""
        if self._closed or not self.enabled:
            return
        if self.watcher is None:
            if not self.ctx.lib.catalog.folders():
                return
            lib = self.ctx.lib
            self.watcher = LibraryWatcher(lib, self._update.emit, debounce=self.debounce,
                                          max_delay=MAX_DELAY, after_batch=lambda: self._run_auto(lib))
            self._helper.submit(self._start, self.watcher)
        else:
            self._helper.submit(self.watcher.sync_folders)

    def _start(self, watcher: LibraryWatcher) -> None:
        """On the helper thread: start, or say why watching is not possible (e.g. the system's
        limit of inotify instances) and leave the app as it was, without watching."""
        try:
            watcher.start()
        except Exception as e:  # noqa: BLE001 - watchdog raises OSError or its own errors
            try:
                watcher.stop(timeout=5)
            except Exception:  # noqa: BLE001, S110 - threads that never started have nothing to stop
                pass
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            self._update.emit(WatchUpdate("stopped", message=f"Cannot watch the library's folders ({why}); "
                                          "rescan to catch up with changes."))

    def stop(self, wait: bool = True) -> None:
        """Stop watching; ``wait``: until its threads have ended (closing the window)."""
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            done = self._helper.submit(watcher.stop)
            if wait:
                done.result()

    def restart(self) -> None:
        """Another library was opened: watch its folders instead."""
        self.stop()
        self.sync()

    def close(self) -> None:
        self._closed = True
        self.stop()
        self._helper.shutdown(wait=True)

    # ------------------------------------------------------------------ auto-apply
    def _run_auto(self, lib) -> str:
        """On the watcher's worker thread, after a batch: the auto categories on the new photos.
        Its ClipdeskError becomes an "error" update (the watcher keeps running)."""
        from clipdesk.ops import auto

        if not auto.load_store(lib)["auto"]:
            return ""
        reports = auto.run(lib)
        if any(r.photos or r.problems for r in reports):
            self._auto.emit(reports)
        return ""  # said by _on_auto, not as a second message

    def _on_auto(self, reports) -> None:
        if self._closed:
            return
        text = describe_auto(reports)
        if text:
            self.message.emit(text)
        if any(r.applied or r.tags_operation or r.sort_operation for r in reports):
            self.ctx.set_last_file_operation(("auto", None))  # one Undo takes the batch back
        self.ctx.auto_changed.emit()
        self.auto_ran.emit(reports)

    # ------------------------------------------------------------------ updates
    def _on_update(self, u: WatchUpdate) -> None:
        if self._closed or self.watcher is None:
            return
        if u.kind == "stopped":
            self.watcher = None
            self.message.emit(u.message)
            return
        if u.kind in ("refresh", "rescan") and u.report is not None:
            self._last_error = ""
            what = describe(u.report)
            if what:
                self.message.emit(what)
                self.changed.emit()
        elif u.kind == "error" and u.message != self._last_error:
            self._last_error = u.message
            self.message.emit(f"Watching folders: {u.message} (will retry)")
        elif u.kind == "mode" and ("no file events" in u.message or "lost" in u.message):
            self.message.emit(u.message)
