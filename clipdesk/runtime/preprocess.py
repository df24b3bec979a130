"""Image preprocessing as data: open_clip's evaluation transform in PIL + numpy (no torch)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipdesk.errors import ModelError

RESIZE_MODES = ("shortest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear")


@dataclass(frozen=True)
class Preprocessing:
    """Resize, centre-crop, scale to [0, 1], normalise — the fields of ``preprocess_cfg.json``."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    @classmethod
    def of(cls, model) -> Preprocessing:
        """From an open_clip model (torch path and exporter)."""
        cfg = model.visual.preprocess_cfg
        return cls.from_cfg(dict(cfg, size=cfg.get("size", model.visual.image_size)))

    @classmethod
    def from_cfg(cls, cfg: dict) -> Preprocessing:
        """From a ``preprocess_cfg.json`` mapping (size as int or [h, w]); ModelError if unusable."""
        size = cfg.get("size")
        if isinstance(size, (list, tuple)):
            if len(size) != 2 or size[0] != size[1]:
                raise ModelError(f"non-square input size {size} is not supported")
            size = size[0]
        try:
            mean = tuple(float(v) for v in cfg["mean"])
            std = tuple(float(v) for v in cfg["std"])
            size = int(size)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"needs size, mean and std ({type(e).__name__}: {e})") from None
        if not 1 <= size <= 4096 or len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ModelError(f"size {size}, mean {mean} or std {std} is out of range")
        interpolation = str(cfg.get("interpolation", "bicubic"))
        resize_mode = str(cfg.get("resize_mode", "shortest"))
        if interpolation not in INTERPOLATIONS:
            raise ModelError(f"interpolation '{interpolation}' is not supported ({', '.join(INTERPOLATIONS)})")
        if resize_mode not in RESIZE_MODES:
            raise ModelError(f"resize mode '{resize_mode}' is not supported ({', '.join(RESIZE_MODES)})")
        return cls(size, mean, std, interpolation, resize_mode)

    def to_cfg(self) -> dict:
        return {"size": [self.size, self.size], "mode": "RGB", "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "resize_mode": self.resize_mode, "fill_color": 0}

    def __call__(self, image) -> np.ndarray:
        """PIL RGB image → (3, size, size) float32, as torchvision's Resize/CenterCrop/ToTensor/Normalize
        compute it (same output sizes, crop offsets and resampling)."""
        from PIL import Image

        resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[self.interpolation]
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        s = self.size
        if self.resize_mode == "squash":
            image = image.resize((s, s), resample)
        else:
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = s, int(s * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
            if (new_w, new_h) != (w, h):
                image = image.resize((new_w, new_h), resample)
            top, left = int(round((new_h - s) / 2.0)), int(round((new_w - s) / 2.0))
            image = image.crop((left, top, left + s, top + s))
        arr = np.asarray(image, dtype=np.float32) * (1.0 / 255.0)
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))
