"""CLIP's text tokenizer through the ``tokenizers`` library, with open_clip's text cleaning.

A model folder carries ``textual/tokenizer.json`` (a tokenizers file: byte-level BPE, special tokens,
post-processor) and ``textual/tokenizer_config.json`` (context length, pad token). Text is cleaned
first as open_clip's ``SimpleTokenizer`` cleans it (ftfy, HTML entities twice, whitespace
collapsed, lower case), then encoded; too long a text is cut to the context length with the
end-of-text token kept last, as open_clip cuts it.
"""
from __future__ import annotations

import gzip
import html
import json
import re
from pathlib import Path

import numpy as np

from clipdesk.errors import ModelError

# open_clip's pre-tokenisation pattern (its special tokens are added tokens here)
_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
SOT, EOT = "<start_of_text>", "<end_of_text>"
MAX_TOKENIZER_BYTES = 64 << 20


# Printable ASCII without "&" and tabs/newlines: ftfy leaves such text as it is (but for line
# breaks, which the whitespace cleaning collapses anyway), so it is not imported for it (0.4 s).
_PLAIN = re.compile(r"[\t\n\r\x20-\x25\x27-\x7e]*")


def clean(text: str) -> str:
    """open_clip's "lower" cleaning: ftfy, HTML entities (twice), whitespace collapsed, lower case."""
    if not _PLAIN.fullmatch(text):
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).strip().lower()


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_clip_tokenizer(bpe_merges_gz: str | Path):
    """A ``tokenizers.Tokenizer`` equal to open_clip's SimpleTokenizer, from its merges file
    (``bpe_simple_vocab_16e6.txt.gz``): the same vocabulary, ids and BPE merges."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors

    with gzip.open(bpe_merges_gz) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
    ids = {tok: i for i, tok in enumerate(vocab)}
    tok = Tokenizer(models.BPE(vocab=ids, merges=merges, end_of_word_suffix="</w>", continuing_subword_prefix="",
                               fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.add_special_tokens([SOT, EOT])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, ids[SOT]), (EOT, ids[EOT])])
    return tok


def _read_json(path: Path, limit: int) -> dict:
    if path.stat().st_size > limit:
        raise ModelError(f"{path} is larger than {limit >> 20} MB: not a tokenizer file")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} does not hold a JSON object")
    return data


class TextTokenizer:
    """Texts → (n, length) token ids, padded with the pad id; ``length`` ≤ the context length."""

    def __init__(self, tokenizer_json: Path, config_json: Path | None, context_length: int):
        from tokenizers import Tokenizer

        if not tokenizer_json.is_file():
            raise ModelError(f"{tokenizer_json} is missing")
        if tokenizer_json.stat().st_size > MAX_TOKENIZER_BYTES:
            raise ModelError(f"{tokenizer_json} is larger than {MAX_TOKENIZER_BYTES >> 20} MB: not a tokenizer file")
        try:
            self._tok = Tokenizer.from_file(str(tokenizer_json))
        except Exception as e:  # noqa: BLE001 - tokenizers raises its own Exception subclass
            raise ModelError(f"{tokenizer_json} is not a tokenizers file ({str(e)[:200]})") from None
        cfg = _read_json(config_json, 1 << 20) if config_json is not None and config_json.is_file() else {}
        length = cfg.get("model_max_length", context_length)
        self.context_length = int(length) if isinstance(length, int) and 2 <= length <= context_length else context_length
        pad = cfg.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        self.pad_id = self._tok.token_to_id(pad) if isinstance(pad, str) and self._tok.token_to_id(pad) is not None else 0
        eot = self._tok.token_to_id(EOT)
        if eot is None:
            eot = self._tok.token_to_id("<|endoftext|>")
        self.eot_id = eot
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def __call__(self, texts: list[str]) -> np.ndarray:
        """(n, L) int64 ids, L the longest encoded text (≤ context length), right-padded."""
        encs = self._tok.encode_batch([clean(t) for t in texts], add_special_tokens=True)
        rows = []
        for e in encs:
            ids = list(e.ids)
            if len(ids) > self.context_length:
                ids = ids[:self.context_length]
                if self.eot_id is not None:
                    ids[-1] = self.eot_id
            rows.append(ids)
        length = max((len(r) for r in rows), default=1)
        out = np.full((len(rows), length), self.pad_id, np.int64)
        for i, r in enumerate(rows):
            out[i, :len(r)] = r
        return out


def tokenizer_config(context_length: int) -> dict:
    """The ``tokenizer_config.json`` the exporter writes beside a CLIP tokenizer."""
    return {"model_max_length": context_length, "pad_token": "!", "bos_token": SOT, "eos_token": EOT,
            "clean": "lower", "tokenizer_class": "CLIPTokenizer"}


