"""The CREMA-D layout parser, cache building and every bad-input case."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.io.wavfile
import torch

from mmlib.data.audio import MediaError
from mmlib.data.cache import TensorCache
from mmlib.data.crema_d import LABELS, LayoutError, build_cache, read_split_file, scan_layout


def test_scan_reads_public_layout(crema_layout):
    clips = scan_layout(crema_layout)
    assert len(clips) == 36
    assert {c.split for c in clips} == {"train", "test"}
    assert sum(c.split == "test" for c in clips) == 9
    assert all(c.wav.suffix == ".wav" and c.video.suffix == ".flv" for c in clips)
    name, label = read_split_file(crema_layout / "train.csv")[0]
    assert name.split("_")[2] == LABELS[label]  # CREMA-D names carry the emotion code


def test_cache_shapes_and_contents(prepared_layout):
    cache = TensorCache.load(prepared_layout / "cache" / "stft_129x94_img32.pt")
    t = cache.tensors
    assert t["audio"].shape == (36, 1, 129, 94) and t["audio"].dtype.is_floating_point
    assert t["visual"].dtype == torch.uint8 and t["audio"].dtype == torch.float16
    assert t["visual"].shape[0] == 36 and t["visual"].shape[2:] == (3, 32, 32)
    assert int(t["visual_count"].min()) >= 1  # 1.3-1.9 s clips give 2 frames at 1 fps
    assert int(t["visual_count"].max()) <= t["visual"].shape[1]
    assert cache.meta["classes"] == list(LABELS) and cache.meta["audio_recipe"] == "stft_129x94"


def test_validation_split_is_stratified_seeded_and_in_memory(prepared_layout):
    before = sorted(prepared_layout.rglob("*"))
    cache = TensorCache.load(prepared_layout / "cache" / "stft_129x94_img32.pt")
    a = cache.carve_validation(0.25, seed=3)
    b = cache.carve_validation(0.25, seed=3)
    assert (a.tensors["split"] == b.tensors["split"]).all() and a.validation_clips() == b.validation_clips()
    assert a.validation_clips() != cache.carve_validation(0.25, seed=4).validation_clips()
    assert sorted(prepared_layout.rglob("*")) == before  # nothing written beside the data
    labels = a.tensors["label"]
    for c in labels[cache.indices("train")].unique():  # stratified: each class gives its share
        n = int((labels[cache.indices("train")] == c).sum())
        assert int((labels[a.indices("val")] == c).sum()) == round(0.25 * n)
    n_train = len(cache.indices("train"))
    assert 0 < len(a.indices("val")) < n_train
    assert len(a.indices("test")) == len(cache.indices("test"))  # test is never touched


def test_missing_directory(tmp_path):
    with pytest.raises(LayoutError, match="dataset directory not found"):
        scan_layout(tmp_path / "nope")


def test_missing_media_directory(crema_copy):
    import shutil
    shutil.rmtree(crema_copy / "VideoFlash")
    with pytest.raises(LayoutError, match="VideoFlash"):
        scan_layout(crema_copy)


def test_unknown_label_names_file_and_line(crema_copy):
    path = crema_copy / "train.csv"
    path.write_text(path.read_text() + "1091_IEO_XYZ_HI,XYZ\n")
    with pytest.raises(LayoutError, match=r"train\.csv:\d+: unknown label 'XYZ'"):
        scan_layout(crema_copy)


def test_clip_without_media(crema_copy):
    path = crema_copy / "test.csv"
    path.write_text(path.read_text() + "1091_IEO_ANG_HI,ANG\n")
    with pytest.raises(LayoutError, match=r"1091_IEO_ANG_HI.*has no media.*AudioWAV/1091_IEO_ANG_HI\.wav"):
        scan_layout(crema_copy)


def test_clip_without_media_skipped_and_reported(crema_copy, capsys):
    path = crema_copy / "test.csv"
    path.write_text(path.read_text() + "1091_IEO_ANG_HI,ANG\n")
    clips = scan_layout(crema_copy, skip_bad=True)
    assert len(clips) == 36
    assert "skipped: clip '1091_IEO_ANG_HI'" in capsys.readouterr().err


def _first_clip(root):
    return read_split_file(root / "train.csv")[0][0]


def test_corrupt_wav_names_file(crema_copy):
    clip = _first_clip(crema_copy)
    (crema_copy / "AudioWAV" / f"{clip}.wav").write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(LayoutError, match=rf"{clip}\.wav: not a readable audio file"):
        build_cache(crema_copy, "stft_129x94", 32)


def test_empty_wav_names_file(crema_copy):
    clip = _first_clip(crema_copy)
    scipy.io.wavfile.write(crema_copy / "AudioWAV" / f"{clip}.wav", 16000, np.zeros(0, dtype=np.int16))
    with pytest.raises(LayoutError, match=rf"{clip}\.wav: audio file holds no samples"):
        build_cache(crema_copy, "stft_129x94", 32)


def test_corrupt_video_names_file(crema_copy):
    clip = _first_clip(crema_copy)
    (crema_copy / "VideoFlash" / f"{clip}.flv").write_bytes(b"FLV not really a video")
    with pytest.raises(LayoutError, match=rf"{clip}\.flv: not a decodable video"):
        build_cache(crema_copy, "stft_129x94", 32)


def test_empty_video_names_file(crema_copy):
    clip = _first_clip(crema_copy)
    (crema_copy / "VideoFlash" / f"{clip}.flv").write_bytes(b"")
    with pytest.raises(LayoutError, match=rf"{clip}\.flv"):
        build_cache(crema_copy, "stft_129x94", 32)


def test_bad_media_skipped_with_skip_bad(crema_copy, capsys):
    clip = _first_clip(crema_copy)
    (crema_copy / "AudioWAV" / f"{clip}.wav").write_bytes(b"junk")
    path = build_cache(crema_copy, "stft_129x94", 32, skip_bad=True)
    cache = TensorCache.load(path)
    assert len(cache) == 35 and clip not in cache.meta["clips"]
    assert f"{clip}.wav" in capsys.readouterr().err


def test_media_error_is_value_error():
    assert issubclass(MediaError, ValueError) and issubclass(LayoutError, ValueError)


def test_tensor_cache_holds_dense_tensors():
    odd = torch.zeros(4, 3, 2).transpose(0, 2)  # a view with permuted strides
    cache = TensorCache(tensors={"x": odd, "label": torch.arange(4)})
    assert cache.tensors["x"].is_contiguous() and torch.equal(cache.tensors["x"], odd)
