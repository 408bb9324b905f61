"""The raise-or-skip step and the frame padding every public-layout loader shares."""
import numpy as np
import pytest
import torch

from mmlib.data.audio import MediaError
from mmlib.data.layout import LayoutError, Listing, check_listings, decode_all
from mmlib.data.video import pad_clips


def _decode(name: str) -> str:
    if name.startswith("bad"):
        raise MediaError(f"{name}.wav: not a decodable wav")
    return name.upper()


def test_decode_all_keeps_order_and_values():
    assert decode_all(["a", "b"], _decode, skip_bad=False, where="root") == [("a", "A"), ("b", "B")]


def test_decode_all_raises_on_the_first_bad_item_and_counts_the_rest():
    with pytest.raises(LayoutError, match=r"bad1\.wav: not a decodable wav \(and 1 more\); pass --skip-bad"):
        decode_all(["a", "bad1", "bad2"], _decode, skip_bad=False, where="root")


def test_decode_all_skips_and_reports_with_skip_bad(capsys):
    assert decode_all(["bad1", "a"], _decode, skip_bad=True, where="root") == [("a", "A")]
    assert "skipped: bad1.wav: not a decodable wav" in capsys.readouterr().err


def test_decode_all_with_nothing_left_names_the_root():
    with pytest.raises(LayoutError, match="^data/x: no usable rows$"):
        decode_all(["bad"], _decode, skip_bad=True, where="data/x", unit="rows")


def test_decode_all_lets_other_errors_through():
    def broken(_):
        raise KeyError("a bug, not bad media")
    with pytest.raises(KeyError):
        decode_all(["a"], broken, skip_bad=True, where="root")


def test_pad_clips_zero_pads_to_the_longest_clip():
    clips = [np.full((1, 3, 2, 2), 7, np.uint8), np.full((3, 3, 2, 2), 9, np.uint8)]
    video, counts = pad_clips(clips)
    assert video.shape == (2, 3, 3, 2, 2) and video.dtype == torch.uint8
    assert counts.tolist() == [1, 3] and counts.dtype == torch.int16
    assert video[0, 0].eq(7).all() and video[0, 1:].eq(0).all() and video[1].eq(9).all()


def test_check_listings_finds_leakage_conflicts_and_repeats():
    rows = [Listing("a", "HAP", "train", "train.csv:1"), Listing("b", "SAD", "train", "train.csv:2"),
            Listing("a", "HAP", "test", "test.csv:1"),  # in two splits
            Listing("c", "NEU", "train", "train.csv:3"), Listing("c", "ANG", "train", "train.csv:4"),  # two labels
            Listing("d", "FEA", "test", "test.csv:2"), Listing("d", "FEA", "test", "test.csv:3")]  # twice alike
    keep, problems = check_listings(rows)
    assert [rows[i].where for i in keep] == ["train.csv:2", "test.csv:2"]  # a and c dropped, d kept once
    assert problems == [
        "train.csv:1: clip 'a' (train, label HAP) is listed in more than one split, also at test.csv:1 (test, label "
        "HAP) (train/test leakage)",
        "train.csv:3: clip 'c' (label NEU) is listed with another label, also at train.csv:4 (train, label ANG)",
        "test.csv:3: clip 'd' is listed again (first at test.csv:2)"]
    assert check_listings(rows[:2]) == ([0, 1], [])
