"""``clipdesk-gui``: the desktop app, and its offscreen self-test."""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

QT_DEPS_CHECK = Path(__file__).resolve().parents[1] / "scripts" / "check_qt_deps.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipdesk-gui", description="clipdesk desktop app")
    p.add_argument("--library", metavar="DIR", help="library folder (default: the last one used)")
    p.add_argument("--model", metavar="NAME", help="model for a new library (e.g. test-tiny)")
    p.add_argument("--model-dir", metavar="DIR", help="a model folder (Immich's layout) for a new library")
    p.add_argument("--weights", metavar="FILE", help="local checkpoint for --model (needs the torch extra)")
    p.add_argument("--device", help="cuda, mps or cpu (default: auto)")
    p.add_argument("--add-folder", metavar="DIR", action="append", default=[],
                   help="add this folder and index it at start (if not in the library yet)")
    p.add_argument("--selftest", metavar="OUTDIR",
                   help="drive a whole session offscreen, save screenshots and selftest.json, exit")
    return p


def check_qt_dependencies() -> int:
    """The check ``make run`` makes (``scripts/check_qt_deps.py``: 0 fine, 1 missing libraries, said
    on stderr with the install command; 2 cannot tell), so ``clipdesk-gui`` started directly says
    what to install instead of Qt's raw xcb abort. A wheel install has no scripts/: 2."""
    if not QT_DEPS_CHECK.is_file():
        return 2
    spec = importlib.util.spec_from_file_location("clipdesk_check_qt_deps", QT_DEPS_CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main()


def _icon():
    """The icon the .deb installs in the hicolor theme, else the one at the top of the app's folder."""
    from PySide6.QtGui import QIcon

    icon = QIcon.fromTheme("clipdesk")
    beside = os.path.join(os.path.dirname(os.path.realpath(sys.executable)), "clipdesk.png")
    return QIcon(beside) if icon.isNull() and os.path.isfile(beside) else icon


class SingleInstance:
    """One window per library: the first launch listens on a local socket named after the library
    folder; a second launch on the same library asks it to show its window (and add the folders it
    was given) and exits, instead of opening a second writer. A lock file next to the socket (held
    while the app runs, freed by the OS when it dies) makes two launches at once agree on which is
    first, and lets a launch after a crash take over the stale socket."""

    def __init__(self, library_folder: str) -> None:
        import hashlib

        from PySide6.QtCore import QDir, QLockFile

        key = hashlib.sha1(os.path.realpath(library_folder).encode()).hexdigest()[:16]
        self.name = f"clipdesk-{os.getuid() if hasattr(os, 'getuid') else 0}-{key}"
        self.lock = QLockFile(os.path.join(QDir.tempPath(), self.name + ".lock"))
        self.lock.setStaleLockTime(0)  # stale only when its process is gone
        # a lock file that cannot be written (no writable temp folder) is no sign of another window
        self.primary = self.lock.tryLock(100) or self.lock.error() != QLockFile.LockError.LockFailedError
        self.server = None

    def _send(self, message: dict, tries: int) -> bool:
        """Ask the window that holds this library to ``message`` (tries 0.1 s apart)."""
        import json

        from PySide6.QtNetwork import QLocalSocket

        socket = QLocalSocket()
        for _ in range(tries):
            socket.connectToServer(self.name)
            if socket.waitForConnected(100):
                socket.write(json.dumps(message).encode() + b"\n")
                socket.waitForBytesWritten(1000)
                socket.disconnectFromServer()
                return True
            time.sleep(0.1)
        return False

    def hand_over(self, add_folders: list[str]) -> int:
        if self._send({"show": True, "add_folders": add_folders}, 50):  # it may still be starting: 5 s
            print("clipdesk is already open on this library: its window is shown.", file=sys.stderr)
            return 0
        from PySide6.QtWidgets import QMessageBox

        QMessageBox.critical(None, "clipdesk", "clipdesk is already running on this library but does not "
                             "answer. Close it (or end it in the system monitor), then start clipdesk again.")
        return 1

    def show_other(self) -> bool:
        """Bring the window that holds this library to the front (a library switched to in this
        one is open in another)."""
        return self._send({"show": True}, 5)

    def release(self) -> None:
        """Stop answering for this library and free it (the window switched to another)."""
        if self.server is not None:
            self.server.close()
            self.server.deleteLater()
            self.server = None
        if self.lock.isLocked():
            self.lock.unlock()

    def serve(self, win) -> None:
        from PySide6.QtNetwork import QLocalServer

        QLocalServer.removeServer(self.name)  # a socket left by a crash: the lock says it is ours now
        self.server = QLocalServer(win)
        self.server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        if not self.server.listen(self.name):
            return  # no socket: a second launch then says this one does not answer; nothing is lost
        self.server.newConnection.connect(lambda: self._accept(win))

    def _accept(self, win) -> None:
        import json

        sock = self.server.nextPendingConnection()

        def read() -> None:
            if not sock.canReadLine():
                return
            try:
                msg = json.loads(bytes(sock.readLine(65536)).decode())
            except (ValueError, UnicodeDecodeError):
                msg = {}
            win.showNormal()
            win.raise_()
            win.activateWindow()
            folders = [f for f in msg.get("add_folders", []) if isinstance(f, str)] if isinstance(msg, dict) else []
            new = [f for f in folders if f not in win.lib.catalog.folders()]
            if new:
                win.add_folders(new)

        sock.readyRead.connect(read)
        sock.disconnected.connect(sock.deleteLater)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.selftest:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    elif check_qt_dependencies() == 1:
        return 1
    from PySide6.QtCore import QSettings, QTimer
    from PySide6.QtWidgets import QApplication, QMessageBox

    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setApplicationName("clipdesk")
    app.setOrganizationName("clipdesk")
    app.setStyle("Fusion")
    app.setDesktopFileName("clipdesk")  # the menu entry: its name and icon in the task bar (Wayland)
    app.setWindowIcon(_icon())

    if args.selftest:
        from .selftest import run_selftest

        return run_selftest(app, args.selftest, model=args.model or "test-tiny", library=args.library)

    from clipdesk.errors import ClipdeskError
    from clipdesk.library import Library, default_library_folder

    from .main_window import MainWindow

    from .recent import RecentLibraries

    settings = QSettings()
    folder = os.path.abspath(os.path.expanduser(args.library or settings.value("library") or default_library_folder()))
    instance = SingleInstance(folder)
    if not instance.primary:  # the library is open in a window already: show that one
        return instance.hand_over([os.path.abspath(f) for f in args.add_folder])
    # the model chosen for this library (kept with it in the recent list), else the last one chosen
    entry = RecentLibraries(settings).get(folder)
    if args.model or args.weights or args.model_dir:
        model, weights, model_dir = args.model, args.weights, args.model_dir
    elif entry is not None and (entry.model or entry.model_dir):
        # a model folder is the model (its name is only a label)
        model, weights, model_dir = (None if entry.model_dir else entry.model), entry.weights, entry.model_dir
    else:
        model, weights = settings.value("model") or None, settings.value("weights") or None
        model_dir = settings.value("model_dir") or None
    device = args.device or (settings.value("device") if settings.value("device") != "auto" else None)
    try:
        lib = Library(folder, model=model, weights=weights, device=device, model_process=True, model_dir=model_dir)
    except ClipdeskError as e:
        QMessageBox.critical(None, "clipdesk", str(e))
        return 1
    win = MainWindow(lib, settings)
    win.show()
    instance.serve(win)
    win.single_instance = instance  # a library switched to later is claimed the same way
    if os.environ.get("CLIPDESK_E2E_STATE"):
        from .e2e_probe import install

        install(win)
    new = [f for f in args.add_folder if os.path.abspath(f) not in lib.catalog.folders()]
    if new:
        QTimer.singleShot(0, lambda: win.add_folders([os.path.abspath(f) for f in new]))
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
