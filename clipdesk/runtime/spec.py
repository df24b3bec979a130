"""Which model: a name, a local checkpoint or a model folder, and where model folders live.

A model is named ``ARCH/PRETRAINED`` (an open_clip pair, e.g. ``ViT-B-32-256/datacomp_s34b_b86k``),
``ARCH`` plus a local checkpoint (``--weights PATH``, the ``[torch]`` extra), ``ARCH/random``
(seeded random weights of a real architecture, ``[torch]``; for benchmarks), ``test-tiny`` (the demo
model that ships inside the package: random weights, meaningless rankings) or a model folder
(``--model-dir DIR``, e.g. one of Immich's exports). Installed folders are
``MODELS/ARCH__PRETRAINED`` (Immich's naming), ``MODELS`` being ``$CLIPDESK_MODELS`` or the user
data folder's ``models``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from clipdesk.errors import ModelError

DEFAULT_MODEL = "ViT-B-32-256/datacomp_s34b_b86k"
TEST_MODEL = "test-tiny"
RANDOM_TAG = "random"
PACKAGED = Path(__file__).with_name("packaged")
META_FILE = "clipdesk.json"


def models_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(os.environ.get("CLIPDESK_MODELS") or Path(user_data_dir("clipdesk")) / "models")


def folder_name(name: str) -> str:
    """``ARCH/PRETRAINED`` → ``ARCH__PRETRAINED`` (Immich's folder naming)."""
    return name.replace("/", "__")


def folder_model_name(folder: Path) -> str:
    """The identity of a model folder: the name its ``clipdesk.json`` gives, else ``A/B`` from a
    folder named ``A__B`` (Immich's naming), else ``dir:NAME``."""
    meta = folder / META_FILE
    try:
        if meta.is_file() and meta.stat().st_size < 65536:
            name = json.loads(meta.read_text()).get("name")
            if isinstance(name, str) and 0 < len(name) < 200:
                return name
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    arch, sep, tag = folder.name.partition("__")
    return f"{arch}/{tag}" if sep and arch and tag else f"dir:{folder.name}"


@dataclass(frozen=True)
class ModelSpec:
    """Which model: architecture and pretrained tag, a local checkpoint, or a model folder."""

    arch: str
    pretrained: str | None = None  # an open_clip tag, "random", or None with ``weights``/``folder``
    weights: str | None = None  # absolute path of a local checkpoint (torch)
    folder: str | None = None  # absolute path of a model folder

    @classmethod
    def parse(cls, name: str | None, weights: str | None = None, model_dir: str | None = None) -> ModelSpec:
        if model_dir:
            folder = Path(os.path.abspath(os.path.expanduser(model_dir)))
            if not folder.is_dir():
                raise ModelError(f"Model folder {folder} does not exist (or is not a folder)")
            named = folder_model_name(folder)
            arch, _, tag = named.partition("/")
            return cls(arch, tag or None, None, str(folder))
        name = (name or DEFAULT_MODEL).strip()
        arch, _, tag = name.partition("/")
        if weights:
            return cls(arch, None, os.path.abspath(os.path.expanduser(weights)))
        if arch == TEST_MODEL:
            return cls(arch, tag or RANDOM_TAG)
        if not tag:
            default_arch, _, default_tag = DEFAULT_MODEL.partition("/")
            tag = default_tag if arch == default_arch else None
            if tag is None:
                raise ModelError(
                    f"Model '{name}' needs a pretrained tag, e.g. '{arch}/<tag>'; "
                    f"'clipdesk models' lists them, or pass --model-dir DIR.")
        return cls(arch, tag)

    @property
    def name(self) -> str:
        """The identity stored with a library's vectors."""
        if self.weights:
            from clipdesk.indexer.decode import file_hash

            try:
                digest = file_hash(self.weights)[:12]
            except OSError:
                digest = "missing"
            return f"{self.arch}+file:{digest}"
        if self.arch == TEST_MODEL and self.pretrained == RANDOM_TAG:
            return self.arch
        return f"{self.arch}/{self.pretrained}" if self.pretrained else self.arch

    @property
    def random_weights(self) -> bool:
        return self.weights is None and self.folder is None and self.pretrained == RANDOM_TAG \
            and self.arch != TEST_MODEL

    def installed_folder(self) -> Path | None:
        """The model folder this spec runs from, where one is there: the given folder, the packaged
        demo model, or an installed ``MODELS/ARCH__PRETRAINED``."""
        if self.folder:
            return Path(self.folder)
        if self.weights or self.random_weights:
            return None
        if self.arch == TEST_MODEL and self.pretrained == RANDOM_TAG:
            return PACKAGED / TEST_MODEL
        path = models_dir() / folder_name(self.name)
        return path if (path / "config.json").is_file() else None
