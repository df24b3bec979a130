"""Run a torch model in a child process, so the desktop app's process never imports torch.

Importing torch initialises large C extensions while holding Python's GIL (hundreds of ms at a
time), and a forward pass spends part of its time in Python too: in the GUI process either would
freeze the interface. ``RemoteEncoder`` has the ``Encoder`` interface; it prepares images with the
same numpy preprocessing (``Preprocessing``) and sends arrays to a ``python -m
clipdesk.model_host`` child over its stdin/stdout.

Wire format (no pickle): each message is one JSON line, followed by ``nbytes`` raw bytes (a
C-contiguous float32 array whose shape the JSON gives). Errors travel as ``{"ok": false,
"type": ..., "message": ...}`` and are raised again in the parent as the same clipdesk error type.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from clipdesk import errors
from clipdesk.runtime import ModelSpec, Preprocessing

log = logging.getLogger(__name__)


def _send(stream, header: dict, payload: bytes = b"") -> None:
    header = dict(header, nbytes=len(payload))
    stream.write(json.dumps(header).encode() + b"\n")
    if payload:
        stream.write(payload)
    stream.flush()


def _recv(stream) -> tuple[dict, bytes]:
    line = stream.readline()
    if not line:
        raise EOFError
    header = json.loads(line)
    n = int(header.get("nbytes", 0))
    payload = stream.read(n) if n else b""
    if len(payload) != n:
        raise EOFError
    return header, payload


def _array(header: dict, payload: bytes) -> np.ndarray:
    return np.frombuffer(payload, dtype=np.float32).reshape(header["shape"])


class RemoteEncoder:
    """An ``Encoder`` whose model lives in a child process. Thread-safe (one request at a time)."""

    def __init__(self, spec: ModelSpec, device: str | None = None, precision: str = "auto",
                 status: Callable[[str], None] | None = None):
        self.spec = spec
        self._lock = threading.Lock()
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._status = status or (lambda _m: None)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._proc = subprocess.Popen([sys.executable, "-m", "clipdesk.model_host"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        threading.Thread(target=self._pump_stderr, name="clipdesk-model-host-log", daemon=True).start()
        try:
            info = self._request({"op": "load", "arch": spec.arch, "pretrained": spec.pretrained,
                                  "weights": spec.weights, "folder": spec.folder, "device": device, "precision": precision})[0]
        except BaseException:
            self.close()
            raise
        self.name = info["name"]
        self.dim = int(info["dim"])
        self.device = info["device"]
        self.precision = info["precision"]
        self.logit_scale = float(info["logit_scale"])
        self.preprocess = Preprocessing(**info["preprocess"])
        self.image_size = self.min_side = self.preprocess.size

    def _pump_stderr(self) -> None:
        """Forward the child's messages, including download progress bars (which end in \\r)."""
        buf = b""
        for chunk in iter(lambda: self._proc.stderr.read1(4096), b""):
            buf += chunk
            *lines, buf = re.split(rb"[\r\n]", buf)
            for raw in lines:
                line = raw.decode(errors="replace").strip()
                if line:
                    self._stderr_tail.append(line)
                    self._status(line)

    def _request(self, header: dict, payload: bytes = b"") -> tuple[dict, bytes]:
        with self._lock:
            try:
                _send(self._proc.stdin, header, payload)
                reply, data = _recv(self._proc.stdout)
            except (EOFError, BrokenPipeError, OSError, ValueError):
                self._proc.wait(timeout=10)
                tail = " | ".join(list(self._stderr_tail)[-3:])
                raise errors.ModelError(f"The model process stopped (exit code {self._proc.returncode}). {tail}") from None
        if not reply.get("ok"):
            cls = getattr(errors, reply.get("type", ""), None)
            if not (isinstance(cls, type) and issubclass(cls, errors.ClipdeskError)):
                cls = errors.ModelError
            raise cls(reply.get("message", "model process error"))
        return reply, data

    def prepare(self, image) -> np.ndarray:
        return self.preprocess(image)

    def embed(self, prepared: Sequence) -> np.ndarray:
        if not len(prepared):
            return np.zeros((0, self.dim), np.float32)
        batch = np.ascontiguousarray(np.stack(list(prepared)), dtype=np.float32)
        return _array(*self._request({"op": "embed", "shape": list(batch.shape)}, batch.tobytes()))

    def encode_images(self, images: Sequence) -> np.ndarray:
        return self.embed([self.prepare(im) for im in images])

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return _array(*self._request({"op": "texts", "texts": list(texts)}))

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                with self._lock:
                    _send(self._proc.stdin, {"op": "quit"})
                self._proc.wait(timeout=10)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()


def serve(stdin, stdout) -> int:
    """The child's loop: load the model on request, then answer embedding requests."""
    from clipdesk.runtime import load_encoder

    enc = None
    while True:
        try:
            header, payload = _recv(stdin)
        except EOFError:
            return 0
        op = header.get("op")
        try:
            if op == "quit":
                return 0
            if op == "load":
                spec = ModelSpec(header["arch"], header.get("pretrained"), header.get("weights"), header.get("folder"))
                enc = load_encoder(spec, header.get("device"), header.get("precision") or "auto",
                                   status=lambda m: print(m, file=sys.stderr, flush=True))
                _send(stdout, {"ok": True, "name": enc.name, "dim": enc.dim, "device": enc.device,
                               "precision": enc.precision, "logit_scale": enc.logit_scale,
                               "preprocess": dataclasses.asdict(enc.preprocess)})
            elif enc is None:
                raise errors.ModelError("no model loaded")
            elif op == "texts":
                out = np.ascontiguousarray(enc.encode_texts(header["texts"]), dtype=np.float32)
                _send(stdout, {"ok": True, "shape": list(out.shape)}, out.tobytes())
            elif op == "embed":
                batch = _array(header, payload)
                out = np.ascontiguousarray(enc.embed(batch), dtype=np.float32)
                _send(stdout, {"ok": True, "shape": list(out.shape)}, out.tobytes())
            else:
                raise errors.ModelError(f"unknown request {op!r}")
        except Exception as e:  # noqa: BLE001 - every failure goes back to the parent as a reply
            _send(stdout, {"ok": False, "type": type(e).__name__, "message": str(e)})


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")
    sys.exit(serve(sys.stdin.buffer, sys.stdout.buffer))
