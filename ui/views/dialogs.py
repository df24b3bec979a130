"""Dialogs: settings, the model-weights dialog of a first run without network, save paths, confirmations."""
from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QHBoxLayout,
                               QLabel, QLineEdit, QMessageBox, QPushButton, QSpinBox, QVBoxLayout, QWidget)

DEMO_MODEL = "test-tiny"
CHECKPOINTS = "Checkpoints (*.safetensors *.bin *.pt *.pth)"


def ask_save_path(parent: QWidget, title: str, default_name: str, filters: str = "CSV (*.csv)") -> str:
    """A Qt (not native) save dialog, so it behaves the same on every desktop and in tests.

    It opens in the folder of the last save (else the home folder), never in the app's working
    directory, which for a desktop launch is wherever the launcher happened to be.
    """
    settings = QSettings()
    folder = settings.value("last_save_dir") or ""
    if not folder or not os.path.isdir(folder):
        folder = str(Path.home())
    path, _ = QFileDialog.getSaveFileName(parent, title, os.path.join(folder, default_name), filters,
                                          options=QFileDialog.Option.DontUseNativeDialog)
    if path:
        settings.setValue("last_save_dir", os.path.dirname(path))
    return path


def confirm(parent: QWidget, title: str, text: str, action: str) -> bool:
    """Ask before something that cannot be undone; the safe choice is the default."""
    box = QMessageBox(QMessageBox.Icon.Warning, title, text, parent=parent)
    box.setObjectName("confirmDialog")
    ok = box.addButton(action, QMessageBox.ButtonRole.DestructiveRole)
    cancel = box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(cancel)
    box.exec()
    return box.clickedButton() is ok


def check_model_folder(path: str) -> str:
    """"" when ``path`` is a usable model folder, else its one-line problem (the runtime's own check:
    bounded JSON reads and file headers, nothing loaded)."""
    from clipdesk.errors import ClipdeskError
    from clipdesk.runtime.folder import ModelFolder

    try:
        ModelFolder.open(Path(path))
    except ClipdeskError as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return ""


class ModelDialog(QDialog):
    """First run without network: the model that could not be fetched and the ways on — a model
    folder (Immich's layout, run without PyTorch), a checkpoint file (only where PyTorch is
    installed), the demo model, or a retry."""

    CHECKPOINT, DEMO, RETRY, FOLDER = 1, 2, 3, 4

    def __init__(self, parent: QWidget, model: str, message: str) -> None:
        from clipdesk.runtime import torch_available

        super().__init__(parent)
        self.setObjectName("modelDialog")
        self.setWindowTitle("Model needed")
        self.choice = 0
        self.checkpoint = ""
        self.folder = ""
        lay = QVBoxLayout(self)
        head = QLabel(f"<b>clipdesk could not fetch the model {model}.</b>")
        head.setWordWrap(True)
        from .banner import without_command_line

        why = QLabel(without_command_line(message))  # the buttons below are the app's ways on
        why.setObjectName("modelDialogMessage")
        why.setWordWrap(True)
        why.setProperty("muted", "true")
        explain = QLabel(
            "The model is downloaded once (a few hundred MB) and needs a network connection. "
            "You can instead:")
        explain.setWordWrap(True)
        for w in (head, why, explain):
            lay.addWidget(w)
        self.choose = QPushButton("Choose a model folder…")
        self.choose.setObjectName("chooseModelFolder")
        self.choose.setToolTip("A model folder copied from elsewhere: config.json, visual/ and textual/ with "
                               "their ONNX models (the layout Immich publishes)")
        lay.addWidget(self.choose)
        self.folder_error = QLabel()
        self.folder_error.setObjectName("modelFolderError")
        self.folder_error.setWordWrap(True)
        self.folder_error.setStyleSheet("color: #8c1d18;")
        self.folder_error.hide()
        lay.addWidget(self.folder_error)
        self.checkpoint_button = None
        if torch_available():  # checkpoints run in PyTorch, an optional extra
            self.checkpoint_button = QPushButton("Choose a checkpoint file… (PyTorch is installed)")
            self.checkpoint_button.setObjectName("chooseCheckpoint")
            self.checkpoint_button.setToolTip("A .safetensors/.bin/.pt file of this model downloaded elsewhere; "
                                              "it runs in PyTorch")
            self.checkpoint_button.clicked.connect(lambda _c=False: self.choose_checkpoint())
            lay.addWidget(self.checkpoint_button)
        self.demo = QPushButton("Use the demo model")
        self.demo.setObjectName("useDemo")
        demo_note = QLabel("The demo model has random weights: the app works, but its search results and "
                           "sorting are meaningless. For trying the app out only.")
        demo_note.setWordWrap(True)
        demo_note.setProperty("muted", "true")
        self.retry = QPushButton("Retry the download")
        self.retry.setObjectName("retryDownload")
        self.retry.setDefault(True)
        lay.addWidget(self.demo)
        lay.addWidget(demo_note)
        lay.addWidget(self.retry)
        self.choose.clicked.connect(lambda _c=False: self.choose_folder())
        self.demo.clicked.connect(lambda: self._done(self.DEMO))
        self.retry.clicked.connect(lambda: self._done(self.RETRY))
        self.setMinimumWidth(460)

    def choose_folder(self, path: str | None = None) -> bool:
        """Pick a model folder (``path``, else a folder chooser); a broken one keeps the dialog open
        with its one-line problem under the button."""
        path = path if path is not None else ask_folder(self, "Model folder (config.json, visual/, textual/)")
        if not path:
            return False
        problem = check_model_folder(path)
        if problem:
            self.folder_error.setText(f"Not a usable model folder: {problem}")
            self.folder_error.show()
            return False
        self.folder = os.path.abspath(path)
        self._done(self.FOLDER)
        return True

    def choose_checkpoint(self) -> None:
        f, _ = QFileDialog.getOpenFileName(self, "CLIP checkpoint", "", CHECKPOINTS,
                                           options=QFileDialog.Option.DontUseNativeDialog)
        if f:
            self.checkpoint = f
            self._done(self.CHECKPOINT)

    def _done(self, choice: int) -> None:
        self.choice = choice
        self.accept()


class SettingsDialog(QDialog):
    """Model, device, thumbnail size and library folder; the window applies them at once."""

    def __init__(self, parent: QWidget, model: str, device: str, thumb: int, library: str,
                 model_note: str = "", model_dir: str = "") -> None:
        super().__init__(parent)
        self.setObjectName("settingsDialog")
        self.setWindowTitle("Settings")
        form = QFormLayout(self)
        self.model = QLineEdit(model)  # the current model as text, never a look-alike placeholder
        self.model.setObjectName("settingsModel")
        self.model.setToolTip("open_clip name/pretrained tag, e.g. ViT-B-32-256/datacomp_s34b_b86k; "
                              f"'{DEMO_MODEL}' is the offline demo model")
        self.device = QComboBox()
        self.device.setObjectName("settingsDevice")
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.device.setCurrentText(device or "auto")
        self.thumb = QSpinBox()
        self.thumb.setObjectName("settingsThumb")
        self.thumb.setRange(64, 320)
        self.thumb.setSingleStep(16)
        self.thumb.setSuffix(" px")
        self.thumb.setValue(thumb)
        folder_row = QHBoxLayout()
        self.model_dir = QLineEdit(model_dir)
        self.model_dir.setObjectName("settingsModelDir")
        self.model_dir.setPlaceholderText("none: the model above, by name")
        self.model_dir.setToolTip("A model folder (config.json, visual/, textual/ with ONNX models): "
                                  "used instead of the model name")
        folder_browse = QPushButton("Choose…")
        folder_browse.setObjectName("settingsModelDirBrowse")
        folder_browse.clicked.connect(self._browse_model_dir)
        folder_row.addWidget(self.model_dir, 1)
        folder_row.addWidget(folder_browse)
        row = QHBoxLayout()
        self.library = QLineEdit(library)
        self.library.setObjectName("settingsLibrary")
        browse = QPushButton("Choose…")
        browse.clicked.connect(self._browse)
        row.addWidget(self.library, 1)
        row.addWidget(browse)
        form.addRow("Model", self.model)
        form.addRow("Model folder", folder_row)
        if model_note:
            note = QLabel(model_note)
            note.setWordWrap(True)
            note.setProperty("muted", "true")
            form.addRow("", note)
        form.addRow("Device", self.device)
        form.addRow("Thumbnail size", self.thumb)
        form.addRow("Library folder", row)
        hint = QLabel("Changes apply when you press OK.")
        hint.setProperty("muted", "true")
        form.addRow("", hint)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        if hasattr(parent, "show_about"):
            about = buttons.addButton("About clipdesk", QDialogButtonBox.ButtonRole.HelpRole)
            about.setObjectName("aboutButton")
            about.clicked.connect(lambda _c=False: parent.show_about())
        form.addRow(buttons)
        self.setMinimumWidth(520)

    def _browse_model_dir(self) -> None:
        d = ask_folder(self, "Model folder (config.json, visual/, textual/)")
        if d:
            self.model_dir.setText(d)

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Library folder", self.library.text(),
                                             QFileDialog.Option.DontUseNativeDialog | QFileDialog.Option.ShowDirsOnly)
        if d:
            self.library.setText(d)


def ask_folder(parent: QWidget, title: str, near: str | None = None) -> str:
    """A Qt (not native) folder chooser that opens where the last one was left, else ``near`` (the
    photos' own folder), else home; its toolbar's "Create New Folder" makes a new one. "" when cancelled."""
    settings = QSettings()
    folder = settings.value("last_folder_dir") or ""
    if not folder or not os.path.isdir(folder):
        folder = near if near and os.path.isdir(near) else str(Path.home())
    d = QFileDialog.getExistingDirectory(parent, title, folder,
                                         QFileDialog.Option.DontUseNativeDialog | QFileDialog.Option.ShowDirsOnly)
    if d:
        settings.setValue("last_folder_dir", d)
    return d


class PlanDialog(QDialog):
    """The preview of a file operation (tags write, copy/move into folders): what would change, then
    Apply or Cancel. ``describe(prefix)`` re-plans when the optional prefix field changes; it returns
    the text to show and whether there is anything to apply."""

    def __init__(self, parent: QWidget, title: str, action: str, describe, prefix: str | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("planDialog")
        self.setWindowTitle(title)
        self.describe = describe
        lay = QVBoxLayout(self)
        self.prefix = None
        if prefix is not None:
            form = QFormLayout()
            self.prefix = QLineEdit(prefix)
            self.prefix.setObjectName("planPrefix")
            self.prefix.setToolTip('Put before every keyword, e.g. "clipdesk/"; empty for none')
            self.prefix.textChanged.connect(lambda _t: self.refresh())
            form.addRow("Keyword prefix", self.prefix)
            lay.addLayout(form)
        self.text = QLabel()
        self.text.setObjectName("planText")
        self.text.setWordWrap(True)
        self.text.setTextFormat(Qt.TextFormat.PlainText)
        lay.addWidget(self.text, 1)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.apply = QPushButton(action)
        self.apply.setObjectName("planApply")
        self.apply.setDefault(True)
        self.apply.clicked.connect(lambda _c=False: self.accept())
        self.cancel = QPushButton("Cancel")
        self.cancel.setObjectName("planCancel")
        self.cancel.clicked.connect(lambda _c=False: self.reject())
        buttons.addWidget(self.apply)
        buttons.addWidget(self.cancel)
        lay.addLayout(buttons)
        self.setMinimumWidth(520)
        self.refresh()

    def prefix_text(self) -> str:
        return self.prefix.text() if self.prefix is not None else ""

    def refresh(self) -> None:
        text, ok = self.describe(self.prefix_text())
        self.text.setText(text)
        self.apply.setEnabled(ok)
