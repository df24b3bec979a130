"""The libraries a person has opened, newest first, each with the model it was opened with.

Kept in the app's settings as one JSON value (a list of ``{"folder", "model", "weights",
"model_dir"}``), so switching back to a library, or relaunching into it, opens it with the model
chosen for it (the demo model, a model folder, or a checkpoint file) instead of asking again. Plain data only:
no pickle, and a damaged value reads as an empty list.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

KEY = "recent_libraries"
NOTES = "library_notes"  # small per-library texts of the app (the Sort tab's categories), by folder
MAX_RECENT = 10


@dataclass(frozen=True)
class RecentLibrary:
    folder: str
    model: str | None = None  # a model name ("test-tiny", "ViT-B-32-256/datacomp_s34b_b86k"), or the
    weights: str | None = None  # architecture of a local checkpoint file
    model_dir: str | None = None  # a model folder (Immich's layout), run without PyTorch

    @property
    def exists(self) -> bool:
        return os.path.isfile(os.path.join(self.folder, "catalog.sqlite"))


def model_choice(spec) -> tuple[str | None, str | None, str | None]:
    """(model, weights, model_dir) to store for a library's model spec (``ModelSpec``-like: arch,
    name, weights, folder)."""
    weights = getattr(spec, "weights", None)
    if weights:
        return getattr(spec, "arch", None), weights, None
    folder = getattr(spec, "folder", None)
    if folder:
        return getattr(spec, "name", None), None, folder
    return getattr(spec, "name", None), None, None


class RecentLibraries:
    """The recent-libraries list over a ``QSettings``-like object (``value``/``setValue``)."""

    def __init__(self, settings) -> None:
        self.settings = settings

    def entries(self) -> list[RecentLibrary]:
        raw = self.settings.value(KEY) or "[]"
        try:
            data = json.loads(raw) if isinstance(raw, str) else []
        except ValueError:
            return []
        out: list[RecentLibrary] = []
        for d in data if isinstance(data, list) else []:
            if isinstance(d, dict) and isinstance(d.get("folder"), str):
                model, weights, model_dir = d.get("model"), d.get("weights"), d.get("model_dir")
                out.append(RecentLibrary(d["folder"], model if isinstance(model, str) else None,
                                         weights if isinstance(weights, str) else None,
                                         model_dir if isinstance(model_dir, str) else None))
        return out[:MAX_RECENT]

    def get(self, folder: str) -> RecentLibrary | None:
        folder = os.path.abspath(os.path.expanduser(folder))
        return next((e for e in self.entries() if e.folder == folder), None)

    def remember(self, folder: str, model: str | None = None, weights: str | None = None,
                 model_dir: str | None = None) -> None:
        """Put ``folder`` first; keep its earlier model when none is given."""
        folder = os.path.abspath(os.path.expanduser(folder))
        old = self.get(folder)
        if model is None and model_dir is None and old is not None:
            model, weights, model_dir = old.model, old.weights, old.model_dir
        rest = [e for e in self.entries() if e.folder != folder]
        self._save([RecentLibrary(folder, model, weights, model_dir), *rest])

    def forget(self, folder: str) -> None:
        folder = os.path.abspath(os.path.expanduser(folder))
        self._save([e for e in self.entries() if e.folder != folder])

    def _save(self, entries: list[RecentLibrary]) -> None:
        self.settings.setValue(KEY, json.dumps([asdict(e) for e in entries[:MAX_RECENT]]))

    # -------------------------------------------------------------- small texts kept per library
    def _notes(self) -> dict:
        raw = self.settings.value(NOTES) or "{}"
        try:
            data = json.loads(raw) if isinstance(raw, str) else {}
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def note(self, folder: str, key: str) -> str:
        value = self._notes().get(os.path.abspath(folder), {})
        value = value.get(key, "") if isinstance(value, dict) else ""
        return value if isinstance(value, str) else ""

    def set_note(self, folder: str, key: str, text: str) -> None:
        notes = self._notes()
        folder = os.path.abspath(folder)
        entry = notes.get(folder) if isinstance(notes.get(folder), dict) else {}
        entry[key] = text[:10_000]  # a few lines of categories, never a whole file
        notes[folder] = entry
        known = {e.folder for e in self.entries()} | {folder}
        self.settings.setValue(NOTES, json.dumps({f: v for f, v in notes.items() if f in known}))
