"""Sarcasm and Twitter-15 (text + image) in their public TSV layout.

Layout: ``<root>/annotations/{train,test}.tsv`` (tab-separated, a header row naming at least the columns
``Label``, ``String`` and ``ImageID`` in any order; other columns are ignored) and one JPEG per row,
``<root>/images/<ImageID>.jpg`` (Sarcasm) or ``<root>/twitter2015_images/<ImageID>.jpg`` (Twitter-15).
Labels are integers: Sarcasm 0 not sarcastic / 1 sarcastic, Twitter-15 0 negative / 1 neutral / 2 positive.

``prepare`` decodes every image once (RGB, resized to image_size x image_size, stored as a one-frame clip),
tokenizes every text to ``text_length`` ids (0 = padding) and writes the tensor cache
``<root>/cache/<tokenizer>_text<L>_img<S>.pt``. The tokenizer is the local Hugging Face ``bert-base-uncased``
when its files are in the local cache (never downloaded), else a word-level vocabulary built from the train
split's texts, saved as ``<root>/cache/vocab.txt`` and reused by later preparations.
"""
from __future__ import annotations

import csv
import functools
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..registry import register
from .cache import SPLIT_CODES, TensorCache, atomic_write_bytes, require_prepared
from .layout import LayoutError, Listing, check_listings, decode_all, report_bad

REQUIRED_COLUMNS = ("Label", "String", "ImageID")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
BERT_NAME = "bert-base-uncased"
MAX_VOCAB = 30522  # the text encoder's default vocabulary size: every id stays below it
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")  # ids 0..3 of the word-level vocabulary
TOKENIZERS = ("auto", "bert", "vocab")
WORD_PATTERN = re.compile(r"\w+|[^\w\s]")


@dataclass
class Item:
    clip: str  # unique id of the row: <split>/<ImageID>/<line>
    label: int
    split: str  # train | test
    text: str
    image: Path
    where: str  # <tsv>:<line>, for error messages
    row: tuple[str, ...] = ()  # the row's columns but its label: what identifies it (a target column included)


def read_tsv(path: Path, num_classes: int, image_dir: Path, split: str) -> tuple[list[Item], list[str]]:
    """Rows of one annotation file, and the problems found (rows whose image is missing)."""
    if not path.is_file():
        raise LayoutError(f"{path}: annotation file not found")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise LayoutError(f"{path}: empty annotation file (expected a header row with "
                          f"{', '.join(REQUIRED_COLUMNS)})")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise LayoutError(f"{path}:1: missing column(s) {', '.join(missing)} in the header "
                          f"({', '.join(header)}); expected {', '.join(REQUIRED_COLUMNS)}")
    col = {c: header.index(c) for c in REQUIRED_COLUMNS}
    items, problems = [], []
    for lineno, row in enumerate(rows[1:], start=2):
        if not "".join(row).strip():
            continue
        where = f"{path}:{lineno}"
        if len(row) <= max(col.values()):
            raise LayoutError(f"{where}: expected {len(header)} tab-separated columns, got {len(row)}")
        label, text, image_id = row[col["Label"]].strip(), row[col["String"]].strip(), row[col["ImageID"]].strip()
        if label not in [str(k) for k in range(num_classes)]:
            raise LayoutError(f"{where}: unknown label {label!r}; labels are 0..{num_classes - 1}")
        if not text:
            raise LayoutError(f"{where}: empty text (ImageID {image_id!r})")
        if not image_id:
            raise LayoutError(f"{where}: empty ImageID")
        image = image_dir / (image_id if image_id.lower().endswith(IMAGE_SUFFIXES) else f"{image_id}.jpg")
        if not image.is_file():
            problems.append(f"{where}: image not found: {image}")
            continue
        row_id = tuple(v.strip() for j, v in enumerate(row) if j != col["Label"])
        items.append(Item(f"{split}/{image_id}/{lineno}", int(label), split, text, image, where, row_id))
    return items, problems


def scan_layout(root: str | Path, image_dir: str, num_classes: int, skip_bad: bool = False) -> list[Item]:
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset directory not found")
    for sub in ("annotations", image_dir):
        if not (root / sub).is_dir():
            raise LayoutError(f"{root / sub}: directory not found (expected annotations/{{train,test}}.tsv "
                              f"and {image_dir}/<ImageID>.jpg)")
    listed, problems = [], []
    for split in ("train", "test"):
        found, bad = read_tsv(root / "annotations" / f"{split}.tsv", num_classes, root / image_dir, split)
        listed += found
        problems += bad
    # a row (its text, image and other columns) in both files, twice, or with two labels
    by_row = {i.row: i for i in listed}

    def name(row: tuple[str, ...]) -> str:
        return f"(image {by_row[row].image.name}, text {by_row[row].text[:60]!r})"

    keep, repeated = check_listings([Listing(i.row, i.label, i.split, i.where) for i in listed], name)
    report_bad(problems + repeated, skip_bad, "rows")
    return [listed[i] for i in keep]


def load_image(path: Path, size: int) -> np.ndarray:
    """(3, size, size) uint8. Raises OSError / ValueError for unreadable files."""
    from PIL import Image

    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when the image is much larger
        rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers


@functools.lru_cache(maxsize=1)
def local_bert_tokenizer():
    """The Hugging Face ``bert-base-uncased`` tokenizer from the local cache, or None (never downloaded)."""
    try:
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(BERT_NAME, local_files_only=True)
    except (OSError, ValueError):
        return None


def resolve_tokenizer(tokenizer: str) -> str:
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got {tokenizer!r}")
    if tokenizer == "auto":
        return "bert" if local_bert_tokenizer() is not None else "vocab"
    if tokenizer == "bert" and local_bert_tokenizer() is None:
        raise FileNotFoundError(f"tokenizer 'bert': no local files for {BERT_NAME!r} in the Hugging Face cache")
    return tokenizer


def split_words(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks."""
    return WORD_PATTERN.findall(text.lower())


def build_vocab(texts: list[str], max_size: int = MAX_VOCAB) -> list[str]:
    """Special tokens, then the words of ``texts`` by decreasing frequency (ties alphabetical)."""
    counts = Counter(w for t in texts for w in split_words(t))
    words = sorted(counts, key=lambda w: (-counts[w], w))
    return list(SPECIAL_TOKENS) + words[: max_size - len(SPECIAL_TOKENS)]


def load_or_build_vocab(path: Path, train_texts: list[str]) -> list[str]:
    """The vocabulary saved at ``path`` (one token a line), or one built from ``train_texts`` and saved."""
    if path.is_file():
        vocab = path.read_text(encoding="utf-8").split("\n")[:-1]
        if tuple(vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS or len(vocab) > MAX_VOCAB:
            raise LayoutError(f"{path}: not a vocabulary of this loader (expected {', '.join(SPECIAL_TOKENS)} "
                              f"first and at most {MAX_VOCAB} tokens); remove it to rebuild")
        return vocab
    vocab = build_vocab(train_texts)
    atomic_write_bytes(path, lambda tmp: tmp.write_text("".join(f"{w}\n" for w in vocab), encoding="utf-8"))
    return vocab


def encode_words(texts: list[str], vocab: list[str], length: int) -> torch.Tensor:
    """``[CLS] words [SEP]`` ids, truncated / padded (0) to ``length``. Unknown words map to [UNK]."""
    index = {w: i for i, w in enumerate(vocab)}
    unk, cls, sep = index["[UNK]"], index["[CLS]"], index["[SEP]"]
    out = torch.zeros(len(texts), length, dtype=torch.int64)
    for row, text in enumerate(texts):
        ids = [cls] + [index.get(w, unk) for w in split_words(text)][: max(length - 2, 0)] + [sep]
        ids = ids[:length]
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    return out


def encode_bert(texts: list[str], length: int) -> torch.Tensor:
    enc = local_bert_tokenizer()(texts, max_length=length, truncation=True, padding="max_length")
    return torch.tensor(enc["input_ids"], dtype=torch.int64)


# ---------------------------------------------------------------------------------------------------------------
# Cache


def build_cache(root: str | Path, image_dir: str, labels: tuple[str, ...], dataset: str, image_size: int,
                text_length: int = 40, skip_bad: bool = False, tokenizer: str = "auto") -> Path:
    """Decode every row once and write the tensor cache. Returns its path."""
    if text_length < 2:
        raise ValueError(f"text_length must be >= 2 (room for [CLS] and [SEP]), got {text_length}")
    root = Path(root)
    kind = resolve_tokenizer(tokenizer)
    items = scan_layout(root, image_dir, len(labels), skip_bad)
    decoded = decode_all(items, lambda item: load_image(item.image, image_size), skip_bad, root,
                         errors=(OSError, ValueError, SyntaxError),  # PIL: UnidentifiedImageError, truncated files
                         describe=lambda item, err: f"{item.where}: unreadable image {item.image}: {err}",
                         unit="rows")
    kept = [item for item, _ in decoded]
    images = np.stack([image[None] for _, image in decoded])  # (N, 1, 3, S, S)
    split = np.array([SPLIT_CODES[i.split] for i in kept])
    train_texts = [i.text for i in kept if i.split == "train"]
    if not train_texts:
        raise LayoutError(f"{root / 'annotations' / 'train.tsv'}: no usable train rows")
    meta_tok = {"tokenizer": BERT_NAME if kind == "bert" else "vocab"}
    texts = [i.text for i in kept]
    if kind == "bert":
        ids = encode_bert(texts, text_length)
        meta_tok.update(vocab_size=local_bert_tokenizer().vocab_size)
    else:
        vocab = load_or_build_vocab(root / "cache" / "vocab.txt", train_texts)
        ids = encode_words(texts, vocab, text_length)
        meta_tok.update(vocab_file="vocab.txt", vocab_size=len(vocab))
    train_pixels = torch.from_numpy(images[split == SPLIT_CODES["train"], 0]).float().div_(255.0)
    mean = train_pixels.mean(dim=(0, 2, 3))
    std = train_pixels.std(dim=(0, 2, 3)).clamp(min=1e-3)
    cache = TensorCache(
        tensors={
            "text": ids,  # (N, L) int64, 0 = padding
            "image": torch.from_numpy(images),  # (N, 1, 3, S, S) uint8
            "image_count": torch.ones(len(kept), dtype=torch.int16),
            "label": torch.tensor([i.label for i in kept], dtype=torch.int64),
            "split": torch.from_numpy(split.astype(np.int8)),
        },
        meta={"dataset": dataset, "classes": list(labels), "clips": [i.clip for i in kept],
              "modalities": ["text", "image"], "image_size": image_size, "audio_recipe": None,
              "text_length": text_length, **meta_tok,
              "normalize": {"image": [[round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]]}},
    )
    path = cache_file(root, kind, text_length, image_size)
    cache.save(path)
    return path


def cache_file(root: str | Path, kind: str, text_length: int, image_size: int) -> Path:
    return Path(root) / "cache" / f"{kind}_text{text_length}_img{image_size}.pt"


class TextImageDataset:
    """A text + image dataset in the TSV layout; subclasses set the name, labels and image directory."""

    name = ""
    labels: tuple[str, ...] = ()
    image_dir = ""
    modalities = {"text": 0, "image": 3}  # text first; the text encoder ignores its input channels
    embedded = False

    def prepare(self, root: str | Path, recipe: str | None = None, image_size: int = 224, skip_bad: bool = False,
                text_length: int = 40, tokenizer: str = "auto", **_) -> Path:
        return build_cache(root, self.image_dir, self.labels, self.name, image_size, text_length, skip_bad,
                           tokenizer)

    def cache_path(self, root: str | Path, recipe: str | None = None, image_size: int = 224, text_length: int = 40,
                   tokenizer: str = "auto", **_) -> Path:
        return cache_file(root, resolve_tokenizer(tokenizer), text_length, image_size)

    def ensure_prepared(self, root: str | Path, recipe: str | None = None, image_size: int = 224,
                        skip_bad: bool = False, **options) -> Path:
        options.pop("generator", None)
        path = self.cache_path(root, recipe, image_size, **options)
        return require_prepared(path, self.name, root, image_size=image_size)


@register("datasets", "sarcasm")
class Sarcasm(TextImageDataset):
    """Multimodal sarcasm detection on Twitter (Cai et al. 2019): 2 classes."""

    name = "sarcasm"
    labels = ("not_sarcastic", "sarcastic")
    image_dir = "images"


@register("datasets", "twitter15")
class Twitter15(TextImageDataset):
    """Twitter-15 target-oriented sentiment (Yu & Jiang 2019): 3 classes."""

    name = "twitter15"
    labels = ("negative", "neutral", "positive")
    image_dir = "twitter2015_images"
