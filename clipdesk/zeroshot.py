"""Zero-shot classification: category names → text classifier → per image the top category.

Each category is embedded in a small ensemble of photo-oriented prompt templates; its class
vector is the normalised mean of the normalised template embeddings (as open_clip's
``build_zero_shot_classifier`` does). Probabilities are a softmax of the model's logit scale times
the cosine similarities.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# A subset of the OpenAI ImageNet templates that suits personal photos (no origami or video games).
PHOTO_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a blurry photo of a {}.",
    "a good photo of a {}.",
    "a photo of my {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a low resolution photo of a {}.",
)


def normalise(x: np.ndarray) -> np.ndarray:
    """L2-normalise along the last axis (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def class_weights_from_template_embeddings(emb: np.ndarray) -> np.ndarray:
    """(C, T, dim) embeddings of each class in each template → (C, dim) class vectors."""
    return normalise(normalise(emb).mean(axis=1))


def class_weights(encode_texts: Callable[[list[str]], np.ndarray], names: Sequence[str],
                  templates: Sequence[str] = PHOTO_TEMPLATES) -> np.ndarray:
    """(C, dim) zero-shot class vectors of category ``names``."""
    prompts = [t.format(n) for n in names for t in templates]
    emb = encode_texts(prompts).reshape(len(names), len(templates), -1)
    return class_weights_from_template_embeddings(emb)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def zeroshot_probabilities(features: np.ndarray, weights: np.ndarray, logit_scale: float) -> np.ndarray:
    """(n, C) class probabilities of image ``features`` (n, dim) under class ``weights`` (C, dim)."""
    return softmax(logit_scale * (features @ weights.T))


@dataclass(frozen=True)
class Assignment:
    index: int  # category index, or -1 for "none of these" (below the threshold)
    probability: float


def top_category(probabilities: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(index int32, probability float32)`` of each row's top category; rows whose top
    probability is under ``threshold`` get index -1."""
    top = probabilities.argmax(axis=1)
    p = probabilities[np.arange(len(top)), top].astype(np.float32)
    index = top.astype(np.int32)
    if threshold is not None:
        index[p < threshold] = -1
    return index, p


def assign(probabilities: np.ndarray, threshold: float | None = None) -> list[Assignment]:
    """Top category per row; rows whose top probability is under ``threshold`` get index -1."""
    index, p = top_category(probabilities, threshold)
    return [Assignment(i, pi) for i, pi in zip(index.tolist(), p.tolist())]
