"""The model's life in the app: warm it up, and when its weights cannot be fetched (first run
offline) ask once — choose a model folder (or, with PyTorch installed, a checkpoint), use the demo
model, or retry.

However many jobs hit the missing model at the same time (the warm-up and an indexing job on a
first run), one dialog opens; a failure of a job started before the user's choice is stale and
does not open it again. ``changed`` asks the window to load the chosen model (and scan folders a
failed run left empty).
"""
from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, QSettings, Signal
from PySide6.QtWidgets import QWidget


from .banner import Banner, without_command_line
from .context import Context
from .dialogs import DEMO_MODEL, ModelDialog

MISSING = "ModelDownloadError"


class ModelSetup(QObject):
    changed = Signal()  # the user chose a model or a retry
    loaded = Signal()
    state_changed = Signal()  # loading / failed changed (the status line shows it)

    def __init__(self, ctx: Context, settings: QSettings, banner: Banner, window: QWidget) -> None:
        super().__init__(window)
        self.ctx, self.settings, self.banner, self.window = ctx, settings, banner, window
        self.job = None
        self.failed = False
        self.dialog: ModelDialog | None = None
        self.epoch = 0  # bumped by each choice in the dialog: failures from before it are stale

    def device_text(self) -> str:
        lib = self.ctx.lib
        if lib.encoder_loaded:
            return lib.encoder.device
        if self.job is not None:
            return "loading…"
        return "model not loaded" if self.failed else "model loads when needed"

    def warm(self) -> None:
        """Load the model in the background so the first search is quick."""
        lib = self.ctx.lib
        if lib.encoder_loaded or self.job is not None:
            return
        self.failed = False
        self.job = self.ctx.jobs.start(lambda: lib.encoder, name="model loading",
                                       on_result=lambda _e: self.mark_loaded(), on_error=self.on_error("model"),
                                       on_finished=self._job_done)
        self.state_changed.emit()

    def _job_done(self) -> None:
        self.job = None
        self.state_changed.emit()

    def mark_loaded(self) -> None:
        self.failed = False
        self.banner.clear("model")
        self.state_changed.emit()
        self.loaded.emit()

    def on_error(self, cause: str) -> Callable[[str, str], None]:
        """An ``on_error`` for a job that loads the model (stale missing-model failures dropped)."""
        epoch = self.epoch

        def report(message: str, kind: str) -> None:
            if kind == MISSING and epoch != self.epoch:
                return
            self.ctx.error.emit(message, kind, cause)
        return report

    def missing(self, message: str) -> None:
        """The weights cannot be fetched: one dialog, whoever asks."""
        self.failed = True
        self.state_changed.emit()
        if self.dialog is not None:
            return
        self.dialog = ModelDialog(self.window, self.ctx.lib.spec.name, message)
        self.dialog.finished.connect(lambda _r, d=self.dialog, m=message: self._choice(d, m))
        self.dialog.open()

    def _choice(self, dlg: ModelDialog, message: str) -> None:
        self.dialog = None
        self.epoch += 1
        dlg.deleteLater()
        lib = self.ctx.lib
        choice = dlg.choice
        if choice == ModelDialog.RETRY:
            self.banner.clear("model")
            self.changed.emit()
            return
        if choice not in (ModelDialog.DEMO, ModelDialog.CHECKPOINT, ModelDialog.FOLDER):
            self.banner.show_message(f"No model loaded: {without_command_line(message)} Open Settings to choose "
                                     "a model or a model folder.", "model")
            return
        model, weights, folder = {ModelDialog.DEMO: (DEMO_MODEL, None, None),
                                  ModelDialog.CHECKPOINT: (None, dlg.checkpoint, None),
                                  ModelDialog.FOLDER: (None, None, dlg.folder)}[choice]
        # Off the GUI thread: switching waits for the model loading that just failed to let go of the
        # library (seconds on a busy machine), and the window must stay responsive meanwhile.
        self.ctx.jobs.start(lib.use_model, model, weights, folder, name="model choice",
                            on_result=lambda _r: self._chosen(choice, weights, folder),
                            on_error=lambda m, k: self.ctx.error.emit(m, k, "model"))

    def _chosen(self, choice: int, weights: str | None, folder: str | None = None) -> None:
        if choice == ModelDialog.DEMO:
            self.settings.setValue("model", DEMO_MODEL)
            self.settings.remove("weights")
            self.settings.remove("model_dir")
            self.banner.show_message("Using the demo model: it has random weights, so search results and "
                                     "sorting are meaningless. Settings → Model switches to a real one.",
                                     "model-demo", info=True)
        elif choice == ModelDialog.FOLDER:
            self.settings.setValue("model_dir", folder)
            self.settings.remove("weights")
        else:
            self.settings.setValue("weights", weights)
            self.settings.remove("model_dir")
        self.banner.clear("model")
        self.changed.emit()
