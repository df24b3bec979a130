"""Drive the real clipdesk window on a virtual X screen with real input, and see what it shows.

``Session`` starts Xvfb, then ``clipdesk-gui`` on it as a separate process with its own home,
config and caches; it moves the pointer and types with xdotool (XTEST: the same events a mouse and
keyboard make), takes screenshots of the X screen, and reads what the window shows from the JSON
snapshot the app writes when ``CLIPDESK_E2E_STATE`` is set (``clipdesk.ui.e2e_probe``). Every wait
has a deadline; a step that does not have its visible effect fails with a screenshot and the app's
log.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REQUIRED_TOOLS = {"Xvfb": "xvfb", "xdotool": "xdotool"}


class StepFailed(AssertionError):
    pass


def missing_tools() -> list[str]:
    """Debian packages to install for the end-to-end run (empty when everything is there)."""
    return sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None})


def output_folder(run: str, default: Path, leftovers: tuple[str, ...]) -> Path:
    """The run's folder ($E2E_OUT/``run``: each run its own, so one run's screenshots are not
    cleared by the next; else ``default``), with what an earlier run left there
    (``leftovers``: library, home, screenshots, ...) removed: every run is a first run. A missing
    tool fails the test with the apt-get line that installs it."""
    import pytest

    missing = missing_tools()
    if missing:
        pytest.fail("the end-to-end run needs " + ", ".join(missing)
                    + f": install with  sudo apt-get install -y {' '.join(missing)}")
    out = Path(os.environ["E2E_OUT"]) / run if os.environ.get("E2E_OUT") else default
    for name in leftovers:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


class Session:
    """One app on one virtual screen. Use as a context manager."""

    def __init__(self, workdir: Path, size: tuple[int, int] = (1600, 1000), app_args: list[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.shots = self.workdir / "screenshots"
        self.shots.mkdir(parents=True, exist_ok=True)
        self.size = size
        self.app_args = list(app_args)
        self.extra_env = env or {}
        self.state_file = self.workdir / "state.json"
        self.log_file = self.workdir / "app.log"
        self.xvfb: subprocess.Popen | None = None
        self.app: subprocess.Popen | None = None
        self.display = ""
        self._shot_no = 0

    # ------------------------------------------------------------------ processes
    def __enter__(self) -> Session:
        self._start_xvfb()
        self.start_app()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_app()
        if self.xvfb is not None:
            self.xvfb.terminate()
            try:
                self.xvfb.wait(5)
            except subprocess.TimeoutExpired:
                self.xvfb.kill()

    def _start_xvfb(self) -> None:
        r, w = os.pipe()
        w_, h_ = self.size
        self.xvfb = subprocess.Popen(
            ["Xvfb", "-displayfd", str(w), "-screen", "0", f"{w_}x{h_}x24", "-nolisten", "tcp", "-noreset"],
            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(w)
        deadline = time.monotonic() + 20
        buf = b""
        while not buf.endswith(b"\n"):
            if time.monotonic() > deadline:
                raise StepFailed("Xvfb did not start within 20 s")
            chunk = os.read(r, 16)
            if not chunk:
                raise StepFailed("Xvfb exited at start")
            buf += chunk
        os.close(r)
        self.display = ":" + buf.decode().strip()

    def app_env(self) -> dict[str, str]:
        home = self.workdir / "home"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "XDG_"))}
        env.update(DISPLAY=self.display, QT_QPA_PLATFORM="xcb", HOME=str(home),
                   XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local/share"),
                   XDG_CACHE_HOME=str(home / ".cache"), HF_HOME=str(home / ".cache/hf"),
                   CLIPDESK_CACHE_DIR=str(home / ".cache/clipdesk"), CLIPDESK_E2E_STATE=str(self.state_file),
                   QT_SCALE_FACTOR="1", QT_ENABLE_HIGHDPI_SCALING="0")
        env.pop("CLIPDESK_LIBRARY", None)
        env.update(self.extra_env)
        return env

    def start_app(self, args: list[str] | None = None) -> None:
        if self.state_file.exists():
            self.state_file.unlink()
        gui = Path(sys.executable).with_name("clipdesk-gui")
        cmd = [str(gui)] if gui.exists() else [sys.executable, "-m", "clipdesk.ui.app"]
        if os.environ.get("E2E_APP"):  # an installed app instead, e.g. E2E_APP=/opt/clipdesk/clipdesk-gui
            cmd = [os.environ["E2E_APP"]]
        self.log = open(self.log_file, "ab")
        self.app = subprocess.Popen(cmd + (self.app_args if args is None else args), env=self.app_env(),
                                    stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait(lambda s: any(w["name"] == "mainWindow" for w in s["windows"]), 60, "the main window to appear")

    def fit_window(self, size: tuple[int, int] | None = None) -> None:
        """Place the main window at the screen's origin and give it ``size`` (default: the screen)."""
        w, h = size or self.size
        deadline = time.monotonic() + 15
        while True:
            r = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", "clipdesk"],
                               env={**os.environ, "DISPLAY": self.display}, capture_output=True, text=True)
            ids = r.stdout.split()
            if ids:
                break
            if time.monotonic() > deadline:
                self.fail("no visible X window named clipdesk")
            time.sleep(0.2)
        for wid in ids:
            self.xdotool("windowmove", wid, "0", "0")
            self.xdotool("windowsize", wid, str(w), str(h))
        self.wait(lambda s: (m := self.widget("mainWindow", s)) and m["w"] == w and m["h"] == h, 10,
                  f"the window to be {w}x{h}")

    def stop_app(self) -> None:
        if self.app is None:
            return
        if self.app.poll() is None:
            os.killpg(self.app.pid, signal.SIGTERM)
            try:
                self.app.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.app.pid, signal.SIGKILL)
                self.app.wait(5)
        self.log.close()
        self.app = None

    # ------------------------------------------------------------------ seeing
    def state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"windows": [], "widgets": {}, "focus": None, "clipboard": ""}

    def widget(self, name: str, state: dict | None = None) -> dict | None:
        w = (state or self.state())["widgets"].get(name)
        return w if w and w.get("visible") else None

    def wait(self, predicate: Callable[[dict], Any], timeout: float, what: str) -> Any:
        """Poll the app's snapshot until ``predicate`` returns something truthy; fail with evidence."""
        deadline = time.monotonic() + timeout
        while True:
            if self.app is not None and self.app.poll() is not None:
                self.fail(f"the app exited (code {self.app.returncode}) while waiting for {what}")
            s = self.state()
            try:
                got = predicate(s)
            except (KeyError, TypeError, IndexError, ValueError):
                got = None
            if got:
                return got
            if time.monotonic() > deadline:
                self.fail(f"waited {timeout:.0f} s for {what}")
            time.sleep(0.1)

    def wait_widget(self, name: str, timeout: float = 15, enabled: bool = True) -> dict:
        return self.wait(lambda s: (w := self.widget(name, s)) and (w["enabled"] or not enabled) and w,
                         timeout, f"widget '{name}' to be visible{' and enabled' if enabled else ''}")

    def screenshot(self, label: str) -> Path:
        from PIL import ImageGrab

        self._shot_no += 1
        path = self.shots / f"{self._shot_no:02d}-{label}.png"
        ImageGrab.grab(xdisplay=self.display).save(path)
        return path

    def fail(self, message: str) -> None:
        shot = self.screenshot("FAILED")
        try:
            log = self.log_file.read_text(errors="replace")[-3000:]
        except OSError:
            log = ""
        raise StepFailed(f"{message}\nscreenshot: {shot}\nstate: {self.state_file}\napp log tail:\n{log}")

    # ------------------------------------------------------------------ acting (real X input)
    def xdotool(self, *args: str) -> None:
        subprocess.run(["xdotool", *args], env={**os.environ, "DISPLAY": self.display}, check=True,
                       timeout=30, capture_output=True)

    @staticmethod
    def center(rect: dict) -> tuple[int, int]:
        return rect["x"] + rect["w"] // 2, rect["y"] + rect["h"] // 2

    def move(self, x: int, y: int) -> None:
        self.xdotool("mousemove", str(x), str(y))

    def click_at(self, x: int, y: int, button: int = 1, double: bool = False) -> None:
        self.move(x, y)
        time.sleep(0.05)
        self.xdotool("click", *(["--repeat", "2", "--delay", "80"] if double else []), str(button))
        time.sleep(0.1)

    def click(self, name: str, timeout: float = 15, button: int = 1) -> dict:
        w = self.wait_widget(name, timeout)
        self.click_at(*self.center(w), button=button)
        return w

    def click_tab(self, tabs: str, text: str) -> None:
        t = self.wait_widget(tabs)
        tab = next(t_ for t_ in t["tabs"] if t_["text"].replace("&", "").startswith(text))
        self.click_at(*self.center(tab))
        self.wait(lambda s: self.widget(tabs, s)["current"].replace("&", "").startswith(text), 5,
                  f"tab '{text}' to be shown")

    def type(self, text: str) -> None:
        self.xdotool("type", "--delay", "15", text)
        time.sleep(0.1)

    def key(self, *keys: str) -> None:
        self.xdotool("key", "--delay", "40", *keys)
        time.sleep(0.15)

    def drag(self, start: tuple[int, int], end: tuple[int, int], via: tuple[int, int] | None = None,
             hold: float = 0.0) -> None:
        """Press, move in small steps (past Qt's drag distance), optionally hover at ``via``, release."""
        self.move(*start)
        time.sleep(0.1)
        self.xdotool("mousedown", "1")
        time.sleep(0.1)
        points = [via, end] if via else [end]
        cur = start
        for target in points:
            for i in range(1, 13):
                x = cur[0] + (target[0] - cur[0]) * i // 12
                y = cur[1] + (target[1] - cur[1]) * i // 12
                self.move(x, y)
                time.sleep(0.03)
            cur = target
            if target is via:
                # hovering: keep nudging so the drag loop sees the pointer rest over the target
                for _ in range(max(1, int(hold / 0.1))):
                    self.move(target[0] + 1, target[1])
                    time.sleep(0.05)
                    self.move(*target)
                    time.sleep(0.05)
        time.sleep(0.15)
        self.xdotool("mouseup", "1")
        time.sleep(0.3)

    def items(self, view: str, state: dict | None = None) -> list[dict]:
        w = self.widget(view, state)
        return w.get("items", []) if w else []
