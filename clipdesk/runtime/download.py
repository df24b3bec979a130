"""Fetch a model folder by name: Immich's published CLIP exports on the Hugging Face hub.

``ARCH/PRETRAINED`` is looked for as the hub repository ``immich-app/ARCH__PRETRAINED`` (Immich's
naming; its tags use ``-`` where open_clip's use ``_``, both are tried). The files are fetched into
a temporary folder beside the destination, each checked, and the folder renamed into place last.
The download host is probed first (a TCP connection, ``NETWORK_PROBE_SECONDS`` at most; none
when ``HF_HUB_OFFLINE`` is set): offline, one :class:`ModelDownloadError` within seconds names the
ways out (a model folder of one's own, ``clipdesk model export`` with the torch extra, the demo model).
Tests never call this; it is exercised by hand.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from clipdesk.errors import ModelDownloadError
from clipdesk.runtime.folder import MAX_ONNX_BYTES, REQUIRED, ModelFolder
from clipdesk.runtime.spec import TEST_MODEL, ModelSpec, folder_name

NETWORK_PROBE_SECONDS = 2.0
HUB = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
ORGANISATION = "immich-app"
FILES = REQUIRED + ("textual/tokenizer_config.json",)


def network_reachable(host: str, port: int, timeout: float = NETWORK_PROBE_SECONDS) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds, name lookup
    included (the lookup has no timeout of its own, so it runs in a daemon thread)."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except (OSError, ValueError):
            result.append(False)

    t = threading.Thread(target=attempt, name="clipdesk-network-probe", daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def download_error(spec: ModelSpec, why: str) -> ModelDownloadError:
    return ModelDownloadError(
        f"Cannot download the model {spec.name}: {why}. Copy a model folder from a machine with internet "
        f"access (an Immich model folder works, or one made with 'clipdesk model export {spec.name}') and "
        f"choose it with --model-dir DIR, or try the app with the demo model: --model {TEST_MODEL} (random "
        f"weights, meaningless rankings).")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _fetch(url: str, dest: Path, progress: Callable[[str], None], label: str) -> None:
    with urllib.request.urlopen(url, timeout=30) as r, open(dest, "wb") as f:  # noqa: S310 - https only
        total = int(r.headers.get("Content-Length") or 0)
        if total > MAX_ONNX_BYTES:
            raise ModelDownloadError(f"{url} is {total:,} bytes, larger than any CLIP tower")
        done = 0
        while chunk := r.read(1 << 20):
            done += len(chunk)
            if done > MAX_ONNX_BYTES:
                raise ModelDownloadError(f"{url} is larger than any CLIP tower")
            f.write(chunk)
            if total:
                progress(f"Downloading {label}: {done / total:.0%} of {total / 2**20:.0f} MB")


def download_folder(spec: ModelSpec, dest: Path, status: Callable[[str], None] | None = None) -> Path:
    """Fetch ``spec``'s model folder into ``dest`` (which must not exist); the folder is checked
    before it is renamed into place."""
    say = status or (lambda _m: None)
    if offline():
        raise download_error(spec, "HF_HUB_OFFLINE is set, so the network is unreachable by choice")
    parts = urllib.parse.urlsplit(HUB)
    host, port = parts.hostname or "huggingface.co", parts.port or (80 if parts.scheme == "http" else 443)
    if not network_reachable(host, port):
        raise download_error(spec, f"{host} is unreachable (no network?)")
    names = dict.fromkeys([folder_name(spec.name), folder_name(f"{spec.arch}/{(spec.pretrained or '').replace('_', '-')}")])
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.download")
    last = "not found"
    for name in names:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            for rel in FILES:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                url = f"{HUB}/{ORGANISATION}/{urllib.parse.quote(name)}/resolve/main/{rel}"
                _fetch(url, tmp / rel, say, f"{spec.name} ({rel})")
            ModelFolder.open(tmp, spec.name)  # a whole, consistent folder, or an error
            (tmp / "clipdesk.json").write_text(f'{{"name": "{spec.name}", "format": 1, "source": "{ORGANISATION}/{name}"}}')
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
            return dest
        except urllib.error.HTTPError as e:
            last = f"the hub answered {e.code} for {ORGANISATION}/{name}"
        except (urllib.error.URLError, OSError) as e:
            last = f"the download failed ({getattr(e, 'reason', e)})"
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
    raise download_error(spec, last)
