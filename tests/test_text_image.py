"""Sarcasm / Twitter-15 TSV + image loaders, the word-level tokenizer and the embedded generators."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from mmlib import experiments
from mmlib.config import ExperimentConfig, from_dict
from mmlib.data import text_image
from mmlib.data.cache import SPLIT_CODES, TensorCache
from mmlib.data.layout import LayoutError
from mmlib.data.synth_text_image import STAMP, SynthTextImageConfig, generate
from mmlib.data.text_image import (MAX_VOCAB, SPECIAL_TOKENS, Twitter15, build_vocab, encode_words, read_tsv,
                                   scan_layout)
from mmlib.registry import get

TINY = {"items": 48, "image_size": 16, "test_fraction": 0.25}


@pytest.fixture(scope="module")
def t15_layout(tmp_path_factory) -> Path:
    """48 items in the public Twitter-15 layout, not marked as generated."""
    root = tmp_path_factory.mktemp("t15") / "twitter15"
    generate(root, SynthTextImageConfig(layout="twitter15", classes=3, **TINY))
    (root / STAMP).unlink()
    return root


@pytest.fixture
def t15(t15_layout, tmp_path) -> Path:
    """A private copy that a test may damage."""
    dst = tmp_path / "twitter15"
    shutil.copytree(t15_layout, dst, ignore=shutil.ignore_patterns("cache"))
    return dst


def prepare(root, size=16, length=12, **kw):
    return Twitter15().prepare(root, None, size, text_length=length, tokenizer="vocab", **kw)


def append_row(path: Path, label="1", image_id="1860693", text="a new row") -> None:
    """Append a row in the file's own column order (header: index Label ImageID String)."""
    path.write_text(path.read_text() + f"99\t{label}\t{image_id}\t{text}\n")


def test_tsv_columns_in_any_order_extra_ignored(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "img" / name).write_bytes(b"")
    tsv = tmp_path / "train.tsv"
    tsv.write_text("String\textra\tImageID\tLabel\nhello world\tx\ta\t2\n\n  \nsecond , text\ty\tb.jpg\t0\n")
    items, problems = read_tsv(tsv, 3, tmp_path / "img", "train")
    assert problems == []
    assert [(i.label, i.text, i.image.name) for i in items] == [(2, "hello world", "a.jpg"), (0, "second , text", "b.jpg")]
    assert items[0].where == f"{tsv}:2" and len({i.clip for i in items}) == 2


def test_scan_reads_generated_layout(t15_layout):
    items = scan_layout(t15_layout, "twitter2015_images", 3)
    assert len(items) == 48 and sum(i.split == "test" for i in items) == 12
    assert {i.label for i in items} == {0, 1, 2}


def test_missing_directories(tmp_path, t15):
    with pytest.raises(LayoutError, match="dataset directory not found"):
        prepare(tmp_path / "nope")
    shutil.rmtree(t15 / "twitter2015_images")
    with pytest.raises(LayoutError, match="twitter2015_images: directory not found"):
        prepare(t15)


def test_missing_tsv(t15):
    (t15 / "annotations" / "test.tsv").unlink()
    with pytest.raises(LayoutError, match=r"test\.tsv: annotation file not found"):
        prepare(t15)


def test_missing_column(t15):
    path = t15 / "annotations" / "train.tsv"
    lines = path.read_text().split("\n")
    path.write_text("\n".join([lines[0].replace("String", "Text")] + lines[1:]))
    with pytest.raises(LayoutError, match=r"train\.tsv:1: missing column\(s\) String"):
        prepare(t15)


def test_unknown_label_names_file_and_row(t15):
    append_row(t15 / "annotations" / "train.tsv", label="3")
    with pytest.raises(LayoutError, match=r"train\.tsv:38: unknown label '3'"):
        prepare(t15)


def test_empty_text_names_file_and_row(t15):
    append_row(t15 / "annotations" / "test.tsv", text=" ")
    with pytest.raises(LayoutError, match=r"test\.tsv:14: empty text"):
        prepare(t15)


def test_missing_image_stops_or_is_skipped(t15, capsys):
    append_row(t15 / "annotations" / "test.tsv", image_id="424242")
    with pytest.raises(LayoutError, match=r"test\.tsv:14: image not found: .*424242\.jpg.*--skip-bad"):
        prepare(t15)
    cache = TensorCache.load(prepare(t15, skip_bad=True))
    assert len(cache) == 48
    assert "skipped: " in capsys.readouterr().err


def test_corrupt_image_stops_or_is_skipped(t15, capsys):
    bad = sorted((t15 / "twitter2015_images").iterdir())[0]
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(LayoutError, match=rf"tsv:\d+: unreadable image .*{bad.name}"):
        prepare(t15)
    cache = TensorCache.load(prepare(t15, skip_bad=True))
    assert len(cache) == 47 and not any(f"/{bad.stem}/" in c for c in cache.meta["clips"])
    assert f"unreadable image {bad}" in capsys.readouterr().err


def test_cache_shapes_dtypes_and_meta(t15):
    path = prepare(t15, size=16, length=12)
    assert path == t15 / "cache" / "vocab_text12_img16.pt"
    raw = torch.load(path, weights_only=True)["tensors"]  # stored dense (odd strides crashed training)
    assert all(t.is_contiguous() for t in raw.values())
    cache = TensorCache.load(path)
    t = cache.tensors
    assert t["text"].shape == (48, 12) and t["text"].dtype == torch.int64
    assert t["image"].shape == (48, 1, 3, 16, 16) and t["image"].dtype == torch.uint8
    assert t["image_count"].dtype == torch.int16 and (t["image_count"] == 1).all()
    assert t["label"].dtype == torch.int64 and t["split"].dtype == torch.int8
    assert set(t["split"].tolist()) == {SPLIT_CODES["train"], SPLIT_CODES["test"]}
    assert (t["text"][:, 0] == SPECIAL_TOKENS.index("[CLS]")).all() and int(t["text"].max()) < 30522
    m = cache.meta
    assert m["classes"] == ["negative", "neutral", "positive"] and m["modalities"] == ["text", "image"]
    assert m["tokenizer"] == "vocab" and m["text_length"] == 12 and m["audio_recipe"] is None
    assert len(set(m["clips"])) == 48
    mean, std = m["normalize"]["image"]
    assert len(mean) == len(std) == 3 and all(0 < v < 1 for v in mean + std)
    carved = cache.carve_validation(0.2, seed=0)  # clip ids are valid validation keys
    assert len(carved.indices("val")) > 0


def test_encode_pads_truncates_and_maps_unknown():
    vocab = list(SPECIAL_TOKENS) + ["a", "b", "!"]
    ids = encode_words(["A b!", "a b a b a b zz", "Zz"], vocab, 6)
    assert ids.tolist() == [[2, 4, 5, 6, 3, 0], [2, 4, 5, 4, 5, 3], [2, 1, 3, 0, 0, 0]]
    assert len(build_vocab([" ".join(f"w{i}" for i in range(MAX_VOCAB + 10))])) == MAX_VOCAB


def test_vocab_from_train_only_and_reused(t15):
    append_row(t15 / "annotations" / "test.tsv", text="zebracorn only in test")
    append_row(t15 / "annotations" / "train.tsv", text="giraffecorn in train")
    cache = TensorCache.load(prepare(t15, length=8))
    vocab_file = t15 / "cache" / "vocab.txt"
    vocab = vocab_file.read_text().split("\n")[:-1]
    assert vocab[:4] == list(SPECIAL_TOKENS) and "giraffecorn" in vocab and "zebracorn" not in vocab
    row = cache.meta["clips"].index(next(c for c in cache.meta["clips"] if c.startswith("test/") and c.endswith("/14")))
    assert cache.tensors["text"][row, 1] == SPECIAL_TOKENS.index("[UNK]")
    before = vocab_file.read_bytes()
    append_row(t15 / "annotations" / "train.tsv", text="okapicorn later")
    TensorCache.load(prepare(t15, length=20))  # another length: another cache, the same vocabulary
    assert vocab_file.read_bytes() == before and (t15 / "cache" / "vocab_text20_img16.pt").is_file()


def test_auto_tokenizer_falls_back_to_vocab(monkeypatch):
    monkeypatch.setattr(text_image, "local_bert_tokenizer", lambda: None)
    assert text_image.resolve_tokenizer("auto") == "vocab"
    with pytest.raises(FileNotFoundError, match="bert-base-uncased"):
        text_image.resolve_tokenizer("bert")


def test_real_dataset_needs_prepare(t15):
    with pytest.raises(FileNotFoundError, match="python -m mmlib prepare --dataset twitter15"):
        get("datasets", "twitter15")().ensure_prepared(t15, None, 16, text_length=12, tokenizer="vocab")


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_generator_is_deterministic_and_stamped(tmp_path):
    cfg = SynthTextImageConfig(items=24, image_size=16, test_fraction=0.25)
    a, b = generate(tmp_path / "a", cfg), generate(tmp_path / "b", cfg)
    assert _digest(a) == _digest(b)
    assert (a / STAMP).read_text().strip() == cfg.fingerprint()
    assert len(list((a / "images").glob("*.jpg"))) == 24
    c = generate(tmp_path / "c", SynthTextImageConfig(items=24, image_size=16, test_fraction=0.25, seed=1))
    assert _digest(a) != _digest(c)


def test_generator_parameters_checked_and_stamp_mismatch(tmp_path):
    ds = get("datasets", "synth_sarcasm")()
    assert ds.embedded and ds.labels == ("not_sarcastic", "sarcastic")
    with pytest.raises(KeyError, match="datasets.synth_sarcasm.bogus"):
        ds.ensure_prepared(tmp_path, None, 16, generator={"bogus": 1})
    with pytest.raises(ValueError, match="2 classes"):
        ds.ensure_prepared(tmp_path, None, 16, generator={"classes": 3})
    with pytest.raises(ValueError, match="layout must be 'sarcasm'"):
        ds.ensure_prepared(tmp_path, None, 16, generator={"layout": "twitter15", "classes": 3})
    path = ds.ensure_prepared(tmp_path, None, 16, generator={"items": 24, "image_size": 16}, text_length=10)
    assert TensorCache.load(path).tensors["text"].shape == (24, 10)
    with pytest.raises(FileExistsError, match="other parameters"):
        ds.ensure_prepared(tmp_path, None, 16, generator={"items": 24, "image_size": 16, "seed": 1})


def test_end_to_end_run_with_tiny_bert(tmp_path):
    cfg = from_dict(ExperimentConfig, {
        "data": {"dataset": "synth_twitter15", "root": str(tmp_path / "data"), "modalities": ["text", "image"],
                 "image_size": 16, "augment": False, "val_fraction": 0.2, "text_length": 16,
                 "generator": {"items": 60, "image_size": 16, "test_fraction": 0.2}},
        "model": {"encoders": {
            "text": {"name": "text_bert", "pretrained": False, "width": 32, "layers": 2, "heads": 2, "max_length": 64},
            "image": {"name": "resnet18", "width": 4}}},
        "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
        "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 32, "threads": 1, "progress": "off"},
    })
    rec = experiments.run(cfg, root=tmp_path / "runs")
    assert rec.data["dataset"] == "synth_twitter15" and rec.data["embedded"] is True
    assert rec.data["classes"] == ["negative", "neutral", "positive"] and rec.data["test"] == 12
    assert set(rec.final["test"]["unimodal"]["zero_feature"]) == {"text", "image"}
    assert 0 <= rec.final["test"]["acc"] <= 1 and len(rec.history) == 2


def test_text_encoder_smaller_than_vocabulary_is_refused(tmp_path):
    cfg = from_dict(ExperimentConfig, {
        "data": {"dataset": "synth_twitter15", "root": str(tmp_path / "data"), "modalities": ["text", "image"],
                 "image_size": 16, "augment": False, "text_length": 16,
                 "generator": {"items": 60, "image_size": 16, "test_fraction": 0.2}},
        "model": {"encoders": {
            "text": {"name": "text_bert", "pretrained": False, "width": 32, "layers": 1, "heads": 2,
                     "max_length": 64, "vocab_size": 8},
            "image": {"name": "resnet18", "width": 4}}},
        "train": {"epochs": 1, "batch_size": 8, "threads": 1, "progress": "off"},
    })
    dataset, cache = experiments.load_cache(cfg)
    needed = cache.meta["vocab_size"]
    assert 8 < needed < 128  # the generator's word list: a small embedding suffices
    with pytest.raises(ValueError, match=rf"model.encoders.text.vocab_size is 8, .* has {needed} tokens"):
        experiments.build(cfg, cache, dataset)
    model, _ = experiments.build(cfg.replace(**{"model.encoders.text.vocab_size": needed}), cache, dataset)
    assert model.encoders["text"].vocab_size == needed
