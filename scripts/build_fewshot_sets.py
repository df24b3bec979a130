#!/usr/bin/env python3
"""Build few-shot evaluation sets from real text on this machine, embedded by a real model.

No pretrained CLIP weights can be installed here (no network but the package registries), so the
few-shot probe is measured on real *text* embedding spaces with CLIP's shape: an item side
(descriptions, like image embeddings) and a text side (class-name prompts embedded by the same
model, like CLIP's zero-shot classifier). ``shared/data/fewshot-proxy.npz`` is one such space with
269 items (K ≤ 8); the sets built here have many items per class, so K = 16 and 32 are measurable.

Source: the Debian package index this machine's apt already holds (``apt-cache dumpavail``; run
``apt-get update`` first on a fresh machine). Each package's one-line synopsis is an item.

* ``debian-sections``: items grouped by the archive *Section* (games, science, sound, ...), the
  class name a readable form of the section.
* ``debian-tags``: items grouped by one *Debtags* facet among fields (astronomy, biology, ...),
  game kinds (board game, puzzle, ...) and what a program works with (e-mail, audio, ...); only
  packages carrying exactly one of the chosen tags, so every item has one true class.

Model: WordLlama ``l2_supercat`` (256-d), whose weights and tokenizer ship inside the ``wordllama``
wheel on PyPI (``pip install 'clipdesk[evalsets]'``); loaded with downloads disabled.

Arrays (the layout of fewshot-proxy.npz): ``X`` (N × d, L2-normalised, float16), ``y`` (N,),
``class_names`` (C), ``templates`` (T), ``class_text`` (C × T × d, L2-normalised, float16).
Identical synopses are kept once; at most ``--per-class`` items per class, sampled with a fixed
seed, so a rerun on the same package index gives the same file.

    python scripts/build_fewshot_sets.py --out benchmarks/data
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections import defaultdict

import numpy as np

SECTIONS = {  # archive section → class name (sections that are language runtimes/libraries left out)
    "admin": "system administration", "comm": "modem and serial communication", "database": "database",
    "debug": "debugging", "editors": "text editor", "electronics": "electronics design",
    "fonts": "font", "games": "game", "graphics": "graphics", "hamradio": "amateur radio",
    "httpd": "web server", "kernel": "operating system kernel", "localization": "language localization",
    "mail": "e-mail", "math": "mathematics", "net": "networking", "science": "science",
    "shells": "command shell", "sound": "sound and audio", "tex": "TeX typesetting",
    "text": "text processing", "vcs": "version control", "video": "video", "web": "web",
    "x11": "X window system", "otherosfs": "other operating systems and file systems",
}
TAGS = {  # debtag → class name
    "field::astronomy": "astronomy", "field::biology": "biology", "field::chemistry": "chemistry",
    "field::electronics": "electronics", "field::finance": "finance and accounting",
    "field::geography": "maps and geography", "field::linguistics": "linguistics",
    "field::mathematics": "mathematics", "field::medicine": "medicine", "field::physics": "physics",
    "field::statistics": "statistics", "game::arcade": "arcade game", "game::board": "board game",
    "game::puzzle": "puzzle game", "game::strategy": "strategy game", "game::card": "card game",
    "works-with::mail": "e-mail", "works-with::audio": "audio", "works-with::video": "video",
    "works-with::font": "fonts", "works-with::archive": "archives and compression",
    "works-with::db": "databases", "use::timekeeping": "time and calendars", "use::chatting": "chat",
    "use::typesetting": "typesetting", "works-with::3dmodel": "3D models",
}
TEMPLATES = ["a {} program", "software for {}", "a package for {}", "{}"]


def packages(text: str):
    """(synopsis, section, tags) of each package stanza of ``apt-cache dumpavail``."""
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t"):
                if key == "Tag":  # the only multi-line field used here
                    fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        synopsis = re.sub(r"\s+", " ", fields.get("Description", "")).strip()
        if not synopsis:
            continue
        section = fields.get("Section", "").rsplit("/", 1)[-1]  # contrib/games → games
        tags = {t.strip() for t in fields.get("Tag", "").split(",") if t.strip()}
        yield synopsis, section, tags


def group(pkgs, kind: str) -> dict[str, list[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for synopsis, section, tags in pkgs:
        if kind == "sections":
            if section in SECTIONS:
                out[SECTIONS[section]].add(synopsis)
        else:
            hit = [TAGS[t] for t in tags if t in TAGS]
            if len(set(hit)) == 1:
                out[hit[0]].add(synopsis)
    # a synopsis in two classes has no single true class
    seen: dict[str, int] = defaultdict(int)
    for items in out.values():
        for s in items:
            seen[s] += 1
    return {c: sorted(s for s in items if seen[s] == 1) for c, items in out.items()}


def load_model():
    try:
        import wordllama
        from wordllama import WordLlama
    except ImportError:
        sys.exit("This script needs the embedding model: pip install 'clipdesk[evalsets]' (wordllama).")
    from pathlib import Path

    # The wheel ships weights/ and tokenizers/ inside the package: use them, never the hub.
    return WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)


def embed(model, texts: list[str]) -> np.ndarray:
    E = np.concatenate([np.asarray(model.embed(texts[i:i + 256]), np.float32) for i in range(0, len(texts), 256)])
    return E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)


def build(model, groups: dict[str, list[str]], per_class: int, min_items: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    names = sorted(c for c, items in groups.items() if len(items) >= min_items)
    texts, y = [], []
    for ci, c in enumerate(names):
        items = groups[c]
        pick = sorted(rng.choice(len(items), min(per_class, len(items)), replace=False))
        texts += [items[i] for i in pick]
        y += [ci] * len(pick)
    X = embed(model, texts)
    prompts = [t.format(c) for c in names for t in TEMPLATES]
    class_text = embed(model, prompts).reshape(len(names), len(TEMPLATES), -1)
    return {"X": X.astype(np.float16), "y": np.array(y, np.int64), "class_names": np.array(names),
            "templates": np.array(TEMPLATES), "class_text": class_text.astype(np.float16),
            "items": np.array(texts)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "benchmarks", "data"))
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--min-items", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dumpavail", help="a saved `apt-cache dumpavail` output (default: run it)")
    args = p.parse_args()
    if args.dumpavail:
        with open(args.dumpavail, encoding="utf-8", errors="replace") as f:
            text = f.read()
    else:
        text = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True,
                              errors="replace", check=True).stdout
    pkgs = list(packages(text))
    if len(pkgs) < 1000:
        sys.exit(f"Only {len(pkgs)} packages in the apt index: run 'apt-get update' first.")
    model = load_model()
    os.makedirs(args.out, exist_ok=True)
    for kind in ("sections", "tags"):
        arrays = build(model, group(pkgs, kind), args.per_class, args.min_items, args.seed)
        path = os.path.join(args.out, f"debian-{kind}.npz")
        np.savez_compressed(path, **arrays)
        counts = np.bincount(arrays["y"])
        print(f"{path}: {len(arrays['y'])} items, {len(counts)} classes ({counts.min()}–{counts.max()} each), "
              f"{arrays['X'].shape[1]}-d, {os.path.getsize(path) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
