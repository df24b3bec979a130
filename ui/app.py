"""``clipdesk-gui``: the desktop app, and its offscreen self-test."""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
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
    from .instance import SingleInstance

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
