"""The encoder the rest of clipdesk uses, over a model folder and a backend's sessions.

Implements the indexer's ``ImageEmbedder`` protocol. Outputs are float32 numpy arrays,
L2-normalised, shape (n, dim). Each tower is loaded on first use: a text search never loads the
image graph, and indexing measures the image backend once per machine (:mod:`choose`).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from clipdesk.errors import ModelError
from clipdesk.runtime.folder import ModelFolder
from clipdesk.runtime.tokenizer import TextTokenizer

TEXT_CACHE_SIZE = 4096


def normalise(feats: np.ndarray) -> np.ndarray:
    feats = np.asarray(feats, np.float32)
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


class FolderEncoder:
    """A model folder run by ONNX Runtime or OpenVINO. Thread-safe."""

    device = "cpu"

    def __init__(self, folder: ModelFolder, spec, precision: str, threads: int,
                 status: Callable[[str], None] | None = None):
        from clipdesk.runtime import choose, onnx

        self.folder = folder
        self.spec = spec
        self.name = folder.name
        self.dim = folder.dim
        self.preprocess = folder.preprocess
        self.image_size = self.min_side = folder.preprocess.size
        self.logit_scale = folder.logit_scale
        self.text_only = False
        # the demo model gains nothing from measuring (or int8): milliseconds either way
        self._requested = "fp32" if precision == "auto" and folder.name == "test-tiny" else precision
        self._threads = threads
        self._status = status or (lambda _m: None)
        self._lock = threading.Lock()
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._visual = None
        # the tokenizer (0.1 s of JSON) is read while ONNX Runtime loads the text graph: every search waits for both
        loaded: dict = {}

        def read_tokenizer() -> None:
            try:
                loaded["tokenizer"] = TextTokenizer(*folder.tokenizer_files, folder.context_length)
            except Exception as e:  # noqa: BLE001 - raised again in the caller's thread
                loaded["error"] = e

        reader = threading.Thread(target=read_tokenizer, name="clipdesk-tokenizer")
        reader.start()
        try:
            self._text = onnx.OrtSession(folder.textual, threads, optimise=False)
        finally:
            reader.join()
        if "error" in loaded:
            raise loaded["error"]
        self.tokenizer = loaded["tokenizer"]
        if folder.vocab_size is not None and self.tokenizer.vocab_size > folder.vocab_size:
            raise ModelError(f"{folder.tokenizer_files[0]} has {self.tokenizer.vocab_size:,} tokens but the text "
                             f"model has {folder.vocab_size:,}: the tokenizer does not match the model")
        self._check_dim(self._text, folder.textual)
        self._choose = choose

    @property
    def precision(self) -> str:
        """The image tower's precision (``fp32``, ``bf16``, ``int8``); measured on first use."""
        v = self._visual
        return v.precision if v is not None else (self._requested if self._requested != "auto" else "fp32")

    @property
    def backend(self) -> str:
        v = self._visual
        return v.backend if v is not None else "onnxruntime"

    def _check_dim(self, session, path) -> None:
        if session.output_dim is not None and session.output_dim != self.dim:
            raise ModelError(f"{path} gives {session.output_dim}-d embeddings but config.json says "
                             f"embed_dim {self.dim}: the folder's files do not belong together")

    def visual(self):
        with self._lock:
            if self._visual is None:
                threads = min(self._threads, self._choose.free_cores())
                session = self._choose.image_session(self.folder, self._requested, threads, self._status)
                self._check_dim(session, self.folder.visual)
                self._visual = session
            return self._visual

    # ------------------------------------------------------------------ images
    def prepare(self, image) -> np.ndarray:
        """PIL RGB image → model input (3, H, W) float32. Thread-safe; runs in decoder threads."""
        return self.preprocess(image)

    def embed(self, prepared: Sequence) -> np.ndarray:
        """Embed prepared images: (n, dim) float32, L2-normalised."""
        if not len(prepared):
            return np.zeros((0, self.dim), np.float32)
        batch = np.stack([np.asarray(p, np.float32) for p in prepared])
        feats = self.visual().run(batch)
        if feats.ndim != 2 or feats.shape != (len(batch), self.dim):
            raise ModelError(f"{self.folder.visual} gave an output of shape {feats.shape}, not ({len(batch)}, {self.dim})")
        return normalise(feats)

    def encode_images(self, images: Sequence) -> np.ndarray:
        return self.embed([self.prepare(im) for im in images])

    # ------------------------------------------------------------------ texts
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts: (n, dim) float32, L2-normalised. Repeated texts hit an LRU cache."""
        texts = list(texts)
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            ids = self.tokenizer(missing)
            fixed = self._text_length()
            if fixed is not None and ids.shape[1] != fixed:  # a graph exported for one length (Immich's)
                padded = np.full((len(ids), fixed), self.tokenizer.pad_id, ids.dtype)
                padded[:, :min(fixed, ids.shape[1])] = ids[:, :fixed]
                ids = padded
            feats = self._text.run(ids)
            if feats.ndim != 2 or feats.shape != (len(missing), self.dim):
                raise ModelError(f"{self.folder.textual} gave an output of shape {feats.shape}, "
                                 f"not ({len(missing)}, {self.dim})")
            feats = normalise(feats)
            with self._lock:
                for t, f in zip(missing, feats):
                    self._text_cache[t] = f
        with self._lock:
            out = np.stack([self._text_cache[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)
            for t in texts:
                self._text_cache.move_to_end(t)
            while len(self._text_cache) > TEXT_CACHE_SIZE:
                self._text_cache.popitem(last=False)
        return out

    def _text_length(self) -> int | None:
        shape = self._text.input_shape
        return shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None

    def close(self) -> None:
        self._visual = None
