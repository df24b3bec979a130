"""Check that the system libraries Qt's X11 platform plugin needs are installed, before starting the app.

PySide6's wheels carry Qt itself but not the X11/XCB client libraries; on a stock desktop without
some of them Qt aborts with "Could not load the Qt platform plugin xcb" and no hint of what to
install. This asks the dynamic linker (``ldd``) which libraries of the plugin are missing and prints
the exact install command. Exit status: 0 when nothing is missing (or the check does not apply),
1 when something is, 2 when it cannot tell (the app then starts and Qt speaks for itself).

Usage: python scripts/check_qt_deps.py   (``make run`` calls it)
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

# Shared-library name (without version) -> Debian/Ubuntu package, for what the xcb plugin and
# QtGui link against outside the wheel.
DEBIAN_PACKAGES = {
    "libxcb-cursor": "libxcb-cursor0", "libxcb-icccm": "libxcb-icccm4", "libxcb-keysyms": "libxcb-keysyms1",
    "libxcb-image": "libxcb-image0", "libxcb-randr": "libxcb-randr0", "libxcb-render-util": "libxcb-render-util0",
    "libxcb-shape": "libxcb-shape0", "libxcb-shm": "libxcb-shm0", "libxcb-sync": "libxcb-sync1",
    "libxcb-xfixes": "libxcb-xfixes0", "libxcb-render": "libxcb-render0", "libxcb-xkb": "libxcb-xkb1",
    "libxcb-util": "libxcb-util1", "libxcb-xinerama": "libxcb-xinerama0", "libxcb": "libxcb1",
    "libxkbcommon-x11": "libxkbcommon-x11-0", "libxkbcommon": "libxkbcommon0", "libX11-xcb": "libx11-xcb1",
    "libX11": "libx11-6", "libGL": "libgl1", "libEGL": "libegl1", "libGLX": "libglx0",
    "libGLdispatch": "libglvnd0", "libfontconfig": "libfontconfig1", "libfreetype": "libfreetype6",
    "libdbus-1": "libdbus-1-3", "libglib-2.0": "libglib2.0-0", "libgthread-2.0": "libglib2.0-0",
}
OFFSCREEN = {"offscreen", "minimal", "vnc", "eglfs", "linuxfb"}


def missing_libraries(qt_dir: Path) -> list[str]:
    """Library file names (e.g. ``libxcb-cursor.so.0``) the xcb plugin needs and the system lacks."""
    targets = [qt_dir / "plugins" / "platforms" / "libqxcb.so", qt_dir / "lib" / "libQt6XcbQpa.so.6",
               qt_dir / "lib" / "libQt6Gui.so.6"]
    missing: list[str] = []
    for t in targets:
        if not t.exists():
            continue
        out = subprocess.run(["ldd", str(t)], capture_output=True, text=True, timeout=30).stdout
        for line in out.splitlines():
            if "not found" in line:
                name = line.split("=>")[0].strip()
                if name not in missing:
                    missing.append(name)
    return missing


def package_for(library: str) -> str | None:
    base = library.split(".so")[0]
    return DEBIAN_PACKAGES.get(base)


def main() -> int:
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM", "").split(":")[0] in OFFSCREEN:
        return 0
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations or shutil.which("ldd") is None:
        return 2
    qt_dir = Path(next(iter(spec.submodule_search_locations))) / "Qt"
    try:
        missing = missing_libraries(qt_dir)
    except (OSError, subprocess.SubprocessError):
        return 2
    if not missing:
        return 0
    packages = sorted({p for p in map(package_for, missing) if p})
    print("clipdesk's window needs system libraries that are not installed: " + ", ".join(missing), file=sys.stderr)
    if packages:
        print("On Debian or Ubuntu, install them with:\n"
              f"    sudo apt-get install -y {' '.join(packages)}", file=sys.stderr)
    unknown = [m for m in missing if package_for(m) is None]
    if unknown or not packages:
        print("On other systems, install the packages that provide: " + ", ".join(unknown or missing),
              file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
