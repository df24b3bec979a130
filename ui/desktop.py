"""Open a photo, or show it in its folder, through the desktop — and say so when that fails.

``QDesktopServices.openUrl`` returns False when no application handles the file; "Show in folder"
tries the file managers that can select a file (``gio``/``nautilus --select``/``dolphin --select``),
then opening the folder. Each function returns an error message, or None when it worked.
"""
from __future__ import annotations

import os
import shutil

from PySide6.QtCore import QProcess, QUrl
from PySide6.QtGui import QDesktopServices, QGuiApplication


def open_path(path: str) -> str | None:
    if not os.path.exists(path):
        return f"The file is gone: {path}"
    if QDesktopServices.openUrl(QUrl.fromLocalFile(path)):
        return None
    QGuiApplication.clipboard().setText(path)
    return f"No application on this desktop opens {os.path.basename(path)}. Its path is copied: {path}"


def show_in_folder(path: str) -> str | None:
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        return f"The folder is gone: {folder}"
    tries = [("nautilus", ["--select", path]), ("dolphin", ["--select", path]),
             ("nemo", [path]), ("gio", ["open", folder]), ("xdg-open", [folder])]
    for program, args in tries:
        exe = shutil.which(program)
        if exe:
            started = QProcess.startDetached(exe, args)
            if started[0] if isinstance(started, tuple) else started:
                return None
    if QDesktopServices.openUrl(QUrl.fromLocalFile(folder)):
        return None
    QGuiApplication.clipboard().setText(path)
    return f"No file manager found on this desktop. The photo's path is copied: {path}"
