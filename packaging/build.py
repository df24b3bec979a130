"""Build clipdesk's self-contained Linux folder, then pack it as a .tar.gz and a .deb (``make dist``).

Run with the build venv's Python (the default, torch-free install plus PyInstaller)::

    build/dist-venv/bin/python packaging/build.py [--out build/dist] [--skip-freeze]

Steps, each checked:

1. PyInstaller freezes ``packaging/clipdesk.spec`` into ``OUT/clipdesk/`` (``clipdesk-gui``,
   ``clipdesk``, ``_internal/``).
2. The folder is made AppDir-ready: ``AppRun``, ``clipdesk.desktop``, ``clipdesk.svg``,
   ``clipdesk.png`` and ``.DirIcon`` at its top, the icon in ``share/icons/hicolor``.
3. Checks: no torch-family file; every ELF file's libraries resolve inside the folder or to the
   few a desktop always has (:data:`SYSTEM_LIBS`); the .desktop file passes ``desktop-file-validate``.
4. ``OUT/clipdesk-VERSION-linux-ARCH.tar.gz`` and ``OUT/clipdesk_VERSION_ARCH.deb`` (the folder in
   ``/opt/clipdesk``, ``/usr/bin/clipdesk`` and ``/usr/bin/clipdesk-gui`` links, the menu entry,
   the icons); sizes printed and written to ``OUT/sizes.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from importlib.metadata import version as dist_version
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
_qt_app = None

# Libraries a bundle takes from the system, as AppImage's exclude list does: the C library family
# (tied to the kernel and the loader), the GL dispatch libraries (tied to the graphics driver) and
# libxcb (shared with the X server's client libraries the driver uses); and libwayland-*, which
# only the Wayland plugin loads, on a Wayland session (it has them; elsewhere Qt uses xcb, as it
# does when that plugin cannot load). Everything else, the XCB
# utility libraries and xkbcommon the xcb plugin needs included, comes in the folder.
SYSTEM_LIBS = re.compile(r"^(linux-vdso|ld-linux[-\w]*|libc|libm|libmvec|libpthread|libdl|librt|libutil|libresolv"
                         r"|libGL|libEGL|libGLX|libGLdispatch|libOpenGL|libxcb|libwayland-client|libwayland-cursor|libwayland-egl)\.so(\.\d+)*$")
# Never in the default install: a file named after one of these means the freeze pulled in an extra.
FORBIDDEN = re.compile(r"(^|/)(torch|torchvision|open_clip|nncf|triton|nvidia|ray)(/|$|[-_.])")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def freeze(out: Path, work: Path) -> Path:
    shutil.rmtree(out / "clipdesk", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    # From a folder outside the source tree: the installed clipdesk is frozen, not the checkout.
    run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN", "--distpath", str(out),
         "--workpath", str(work / "pyi"), str(HERE / "clipdesk.spec")], cwd=work)
    return out / "clipdesk"


def render_icons(svg: Path, dest: Path) -> dict[int, Path]:
    """PNG renderings of ``svg`` at :data:`ICON_SIZES` (Qt's SVG renderer, offscreen)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    global _qt_app  # Qt paints only while an application object exists
    _qt_app = QGuiApplication.instance() or QGuiApplication([])
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"{svg} is not a valid SVG")
    pngs = {}
    for size in ICON_SIZES:
        img = QImage(size, size, QImage.Format.Format_ARGB32)
        img.fill(Qt.GlobalColor.transparent)
        painter = QPainter(img)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        path = dest / f"{size}x{size}" / "apps" / "clipdesk.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not img.save(str(path)):
            raise SystemExit(f"could not write {path}")
        pngs[size] = path
    scalable = dest / "scalable" / "apps" / "clipdesk.svg"
    scalable.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(svg, scalable)
    return pngs


def lay_out(app: Path) -> None:
    """Make the frozen folder an AppDir: AppRun, the .desktop file and the icon at its top."""
    shutil.copy2(HERE / "AppRun", app / "AppRun")
    shutil.copy2(HERE / "clipdesk.desktop", app / "clipdesk.desktop")
    shutil.copy2(HERE / "clipdesk.svg", app / "clipdesk.svg")
    shutil.copy2(REPO / "LICENSE", app / "LICENSE")
    pngs = render_icons(HERE / "clipdesk.svg", app / "share" / "icons" / "hicolor")
    shutil.copy2(pngs[256], app / "clipdesk.png")
    dir_icon = app / ".DirIcon"
    if dir_icon.exists() or dir_icon.is_symlink():
        dir_icon.unlink()
    dir_icon.symlink_to("clipdesk.png")


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def outside_libraries(app: Path) -> dict[str, set[str]]:
    """For each ELF file in ``app``, the libraries the loader finds outside the folder or not at all
    (``name => not found``), asked of ``ldd`` with the search path the frozen programs set."""
    internal = app / "_internal"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LD_LIBRARY_PATH": str(internal)}
    found: dict[str, set[str]] = {}
    for path in sorted(p for p in app.rglob("*") if p.is_file() and not p.is_symlink() and is_elf(p)):
        r = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=env)
        if r.returncode != 0:  # a static or foreign ELF: nothing it loads
            continue
        for line in r.stdout.splitlines():
            m = re.match(r"\s*(\S+)\s+=>\s+(.*?)\s*(\(0x[0-9a-f]+\))?$", line)
            if not m:
                continue
            name, target = m.group(1), m.group(2)
            if target == "not found" or not target.startswith(str(app)):
                found.setdefault(path.relative_to(app).as_posix(), set()).add(
                    f"{name} => not found" if target == "not found" else name)
    return found


def check(app: Path) -> None:
    forbidden = sorted(p.relative_to(app).as_posix() for p in app.rglob("*")
                       if FORBIDDEN.search(p.relative_to(app).as_posix()))
    if forbidden:
        raise SystemExit(f"the bundle contains files of torch-only packages: {forbidden[:10]}")
    bad = {f: sorted(n for n in names if not SYSTEM_LIBS.match(n.split(" ")[0])) for f, names in outside_libraries(app).items()}
    bad = {f: n for f, n in bad.items() if n}
    if bad:
        lines = "\n".join(f"  {f}: {', '.join(n)}" for f, n in sorted(bad.items()))
        raise SystemExit(f"libraries the bundle would take from the system (or lacks):\n{lines}")
    if shutil.which("desktop-file-validate"):
        run(["desktop-file-validate", str(app / "clipdesk.desktop")])
    else:
        print("desktop-file-validate not installed: the .desktop file is not validated", flush=True)
    print("checked: no torch-family files; every library inside the folder or in", SYSTEM_LIBS.pattern, flush=True)


def tree_size(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


def max_glibc(app: Path) -> str:
    """The newest GLIBC_x.y symbol version any file in the folder needs (the .deb's libc6 floor)."""
    if shutil.which("objdump") is None:
        raise SystemExit("the .deb's libc6 version is read with objdump: install binutils")
    best = (2, 17)
    for path in (p for p in app.rglob("*") if p.is_file() and not p.is_symlink() and is_elf(p)):
        r = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True)
        for major, minor in re.findall(r"GLIBC_(\d+)\.(\d+)", r.stdout):
            best = max(best, (int(major), int(minor)))
    return f"{best[0]}.{best[1]}"


def pack_tar(app: Path, dest: Path) -> None:
    with tarfile.open(dest, "w:gz", compresslevel=6) as tar:
        tar.add(app, arcname="clipdesk")


def pack_deb(app: Path, dest: Path, version: str, arch: str, work: Path) -> None:
    root = work / "deb"
    shutil.rmtree(root, ignore_errors=True)
    opt = root / "opt" / "clipdesk"
    shutil.copytree(app, opt, symlinks=True)
    (root / "usr" / "bin").mkdir(parents=True)
    for prog in ("clipdesk", "clipdesk-gui"):
        (root / "usr" / "bin" / prog).symlink_to(f"/opt/clipdesk/{prog}")
    apps = root / "usr" / "share" / "applications"
    apps.mkdir(parents=True)
    shutil.copy2(HERE / "clipdesk.desktop", apps / "clipdesk.desktop")
    shutil.copytree(app / "share" / "icons", root / "usr" / "share" / "icons")
    doc = root / "usr" / "share" / "doc" / "clipdesk"
    doc.mkdir(parents=True)
    shutil.copy2(REPO / "LICENSE", doc / "copyright")
    (root / "DEBIAN").mkdir()
    installed_kb = (tree_size(root) + 1023) // 1024
    glibc = max_glibc(app)
    control = (f"Package: clipdesk\nVersion: {version}\nArchitecture: {arch}\nSection: graphics\nPriority: optional\n"
               f"Maintainer: clipdesk developers <clipdesk@localhost>\nInstalled-Size: {installed_kb}\n"
               # what the folder takes from the system (SYSTEM_LIBS): glibc, the GL dispatch libraries, libxcb
               f"Depends: libc6 (>= {glibc}), libgl1, libegl1, libxcb1\n"
               "Description: search and organise a photo library with CLIP\n"
               " Find photos by describing them, sort them into categories with no training,\n"
               " teach it your own categories from a few examples. Self-contained: Python,\n"
               " Qt and the model runtime (ONNX Runtime, OpenVINO) are inside /opt/clipdesk.\n")
    (root / "DEBIAN" / "control").write_text(control)
    for d in root.rglob("*"):
        if d.is_dir():
            d.chmod(0o755)
    # gzip: readable by every dpkg, and quick to build on a 2-core CI machine
    run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(dest)])
    shutil.rmtree(root)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "build" / "dist"), help="output folder (default build/dist)")
    p.add_argument("--work", default=str(REPO / "build" / "dist-work"), help="PyInstaller's work folder")
    p.add_argument("--skip-freeze", action="store_true", help="re-lay, check and pack an existing folder")
    args = p.parse_args()
    out, work = Path(args.out).resolve(), Path(args.work).resolve()
    out.mkdir(parents=True, exist_ok=True)
    version = dist_version("clipdesk")
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    timings = {}
    t = time.monotonic()
    app = out / "clipdesk" if args.skip_freeze else freeze(out, work)
    timings["freeze_s"] = round(time.monotonic() - t, 1)
    lay_out(app)
    check(app)
    t = time.monotonic()
    tar = out / f"clipdesk-{version}-linux-{platform.machine()}.tar.gz"
    pack_tar(app, tar)
    timings["tar_s"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    deb = out / f"clipdesk_{version}_{arch}.deb"
    pack_deb(app, deb, version, arch, work)
    timings["deb_s"] = round(time.monotonic() - t, 1)
    sizes = {"folder_bytes": tree_size(app), "tar_gz_bytes": tar.stat().st_size, "deb_bytes": deb.stat().st_size,
             **timings, "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
    (out / "sizes.json").write_text(json.dumps(sizes, indent=1))
    mb = 1 << 20
    print(f"folder {app}: {sizes['folder_bytes'] / mb:.0f} MiB unpacked\n{tar}: {sizes['tar_gz_bytes'] / mb:.0f} MiB\n"
          f"{deb}: {sizes['deb_bytes'] / mb:.0f} MiB\ntimes {timings}, load {' '.join(sizes['loadavg'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
