"""Run core jobs off the GUI thread: progress, result or error come back as queued signals.

A job is any core function that accepts ``progress=`` and ``cancel=`` keywords (the core's long
jobs all do). The worker is a ``QRunnable`` whose signals live on a separate ``QObject`` created
on the GUI thread, so every signal is delivered on the GUI thread and widgets are touched only
there. Cancelling sets the job's token; the job stops at its next batch boundary.
"""
from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import Callable

from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, Signal

from clipdesk.errors import ClipdeskError
from clipdesk.indexer.pipeline import CancelToken, Cancelled

log = logging.getLogger(__name__)


class WorkerSignals(QObject):
    progress = Signal(object)
    # one signal for the end, so the job leaves Jobs.active *before* its result is delivered:
    # with separate result and finished signals, a result slot (enabling Undo, say) ran while the
    # job still counted as running, and an action taken in between was refused as "still running"
    ended = Signal(str, object)  # outcome and its slot's arguments: "result" (value,), "error"
    # (message, error class name; "bug" for unexpected exceptions), "cancelled" ()


class Worker(QRunnable):
    def __init__(self, fn: Callable, *args, name: str = "", **kwargs):
        super().__init__()
        self.setAutoDelete(False)  # the Jobs registry owns it until finished
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.name = name or getattr(fn, "__name__", "job")
        self.token = CancelToken()
        self.signals = WorkerSignals()
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        if "progress" in params:
            self.kwargs.setdefault("progress", self.signals.progress.emit)
        if "cancel" in params:
            self.kwargs.setdefault("cancel", self.token)

    def cancel(self) -> None:
        self.token.cancel()

    def run(self) -> None:
        outcome: tuple[str, tuple] = ("cancelled", ())
        try:
            value = self.fn(*self.args, **self.kwargs)
            if not self.token.cancelled:
                outcome = ("result", (value,))
        except Cancelled:
            pass
        except ClipdeskError as e:
            outcome = ("error", (str(e), type(e).__name__))
        except Exception as e:  # noqa: BLE001 - shown to the user as a bug, with its trace logged
            log.error("%s failed:\n%s", self.name, traceback.format_exc())
            outcome = ("error", (f"Unexpected error in {self.name}: {type(e).__name__}: {e}", "bug"))
        finally:
            self.signals.ended.emit(*outcome)


class Jobs(QObject):
    """Starts workers and keeps them alive until they finish; cancels and waits on shutdown."""

    busy_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None, max_threads: int = 4):
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max_threads)
        self.pool.setExpiryTimeout(2000)
        self._active: set[Worker] = set()
        self.closed = False  # set by close(): results still queued are dropped

    def start(self, fn: Callable, *args, on_result: Callable | None = None,
              on_error: Callable[[str, str], None] | None = None, on_progress: Callable | None = None,
              on_finished: Callable | None = None, on_cancelled: Callable | None = None,
              name: str = "", **kwargs) -> Worker:
        w = Worker(fn, *args, name=name, **kwargs)
        q = Qt.ConnectionType.QueuedConnection
        if on_progress is not None:
            w.signals.progress.connect(lambda p, s=on_progress: self._deliver(s, p), q)
        slots = {"result": on_result, "error": on_error, "cancelled": on_cancelled}
        w.signals.ended.connect(lambda outcome, args, w=w: self._done(w, slots[outcome], args, on_finished), q)
        self._active.add(w)
        self.busy_changed.emit(True)
        self.pool.start(w)
        return w

    def _deliver(self, slot: Callable, *args) -> None:
        if not self.closed:  # after shutdown the window and its library are gone
            slot(*args)

    def _done(self, w: Worker, slot: Callable | None, args: tuple, on_finished: Callable | None) -> None:
        self._active.discard(w)  # first: whatever the slots do next sees the job as over
        try:
            if slot is not None:
                self._deliver(slot, *args)
            if on_finished is not None:
                self._deliver(on_finished)
        finally:
            if not self._active:
                self.busy_changed.emit(False)

    @property
    def active(self) -> list[Worker]:
        return list(self._active)

    def cancel_all(self) -> None:
        for w in list(self._active):
            w.cancel()

    def shutdown(self, timeout_ms: int = 30000, close: bool = True) -> bool:
        """Cancel everything and wait for the threads to finish. ``close``: also drop the results
        still on their way (the app is closing); without, the pool stays usable (library switch)."""
        self.cancel_all()
        done = self.pool.waitForDone(timeout_ms)
        self.closed = close
        return done
