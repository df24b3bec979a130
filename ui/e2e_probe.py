"""What the end-to-end harness sees of the running app: a JSON snapshot of its named widgets.

The end-to-end run (``make e2e``) drives the real window with real X input (xdotool) and needs
to know where things are on the screen and what they show. When ``CLIPDESK_E2E_STATE`` names a
file, ``install(window)`` writes a snapshot there every 200 ms: every visible top-level window and
every widget with an object name — global geometry, visibility, enabled, text, and for item views
the on-screen rectangle and path of each visible item. It reads widgets only, never changes them,
and costs a few milliseconds per snapshot (only named widgets and visible items are visited).
"""
from __future__ import annotations

import json
import os

from PySide6.QtCore import QObject, QRect, Qt, QTimer
from PySide6.QtWidgets import (QAbstractButton, QAbstractItemView, QAbstractSlider, QAbstractSpinBox, QApplication,
                               QComboBox, QLabel, QLineEdit, QPlainTextEdit, QStatusBar, QTabWidget, QWidget)

INTERVAL_MS = 200
MAX_ITEMS = 400  # per view: enough for any screen


def _rect(w: QWidget, r: QRect | None = None) -> dict:
    r = r if r is not None else w.rect()
    tl = w.mapToGlobal(r.topLeft())
    return {"x": tl.x(), "y": tl.y(), "w": r.width(), "h": r.height()}


def _text(w: QWidget) -> str | None:
    if isinstance(w, (QLabel, QAbstractButton, QLineEdit, QAbstractSpinBox)):
        return w.text()
    if isinstance(w, QComboBox):
        return w.currentText()
    if isinstance(w, QPlainTextEdit):
        return w.toPlainText()
    if isinstance(w, QStatusBar):
        return w.currentMessage()  # the transient line ("3 new photos")
    return None


def _items(view: QAbstractItemView) -> list[dict]:
    model = view.model()
    if model is None:
        return []
    path_role = getattr(model, "PathRole", Qt.ItemDataRole.UserRole)
    viewport = view.viewport()
    visible = viewport.rect()
    selected = {i.row() for i in view.selectionModel().selectedIndexes()} if view.selectionModel() else set()
    out = []
    for row in range(model.rowCount()):
        idx = model.index(row, 0)
        r = view.visualRect(idx)
        if not r.isValid() or not visible.intersects(r):
            continue
        r = r.intersected(visible)
        tl = viewport.mapToGlobal(r.topLeft())
        path = idx.data(path_role)
        out.append({"row": row, "path": path if isinstance(path, str) else None,
                    "text": idx.data(Qt.ItemDataRole.DisplayRole) if isinstance(
                        idx.data(Qt.ItemDataRole.DisplayRole), str) else None,
                    "selected": row in selected, "x": tl.x(), "y": tl.y(), "w": r.width(), "h": r.height()})
        if len(out) >= MAX_ITEMS:
            break
    return out


def _describe(w: QWidget) -> dict:
    d = {"class": type(w).__name__, "visible": w.isVisible(), "enabled": w.isEnabled(), **_rect(w)}
    text = _text(w)
    if text is not None:
        d["text"] = text
    if isinstance(w, QAbstractButton) and w.isCheckable():
        d["checked"] = w.isChecked()
    if isinstance(w, QAbstractSlider):
        d.update(value=w.value(), minimum=w.minimum(), maximum=w.maximum())
    if isinstance(w, QComboBox):
        d["options"] = [w.itemText(i) for i in range(w.count())]
    if isinstance(w, QTabWidget):
        bar = w.tabBar()
        d["current"] = w.tabText(w.currentIndex())
        d["tabs"] = [{"text": w.tabText(i), **_rect(bar, bar.tabRect(i))} for i in range(w.count())]
    if isinstance(w, QAbstractItemView) and w.isVisible():
        d["count"] = w.model().rowCount() if w.model() is not None else 0
        d["items"] = _items(w)
    return d


def snapshot() -> dict:
    """Everything the harness may look at, as plain JSON-able data."""
    app = QApplication.instance()
    windows = []
    named: dict[str, dict] = {}
    for top in app.topLevelWidgets():
        if not top.isVisible():
            continue
        windows.append({"name": top.objectName(), "class": type(top).__name__, "title": top.windowTitle(),
                        "modal": top.isModal(), **_rect(top)})
        for w in [top, *top.findChildren(QWidget)]:
            name = w.objectName()
            # Qt names some internals itself ("qt_…"); only the app's own names are a contract.
            if name and not name.startswith("qt_") and name not in named:
                named[name] = _describe(w)
    focus = app.focusWidget()
    return {"windows": windows, "widgets": named,
            "focus": focus.objectName() if focus is not None else None,
            "clipboard": app.clipboard().text()[:4000]}


class _Writer(QObject):
    def __init__(self, path: str, parent: QObject) -> None:
        super().__init__(parent)
        self.path = path
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.write)
        self.timer.start(INTERVAL_MS)

    def write(self) -> None:
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(snapshot(), f, ensure_ascii=False)
            os.replace(tmp, self.path)
        except (OSError, RuntimeError):
            pass  # the harness waits for the next snapshot; a probe must never disturb the app


def install(window: QWidget) -> None:
    """Start writing snapshots to ``$CLIPDESK_E2E_STATE`` (no-op when it is not set)."""
    path = os.environ.get("CLIPDESK_E2E_STATE")
    if path:
        app = QApplication.instance()
        app._e2e_writer = _Writer(path, app)  # owned by the app: lives as long as it does
        app._e2e_writer.write()

