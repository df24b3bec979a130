"""One window per library: the first window on a library answers for it on a local socket; a
second launch (or another window switching to it) asks that window to come to the front instead of
opening a second writer."""
from __future__ import annotations

import os
import sys
import time


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
