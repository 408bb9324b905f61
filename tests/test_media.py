"""Audio recipes (shapes and the STFT itself), frame extraction order, and frame choice in the loader."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.io.wavfile
import torch

from mmlib.data.audio import MediaError, read_wav, spectrogram
from mmlib.data.loader import random_resized_crop, segment_frames
from mmlib.registry import get, names


@pytest.mark.parametrize("recipe, shape", [("stft_257x188", (257, 188)), ("spec_257x299", (257, 299)),
                                           ("spec_257x1004", (257, 1004)), ("stft_129x94", (129, 94)),
                                           ("stft_129x47", (129, 47)), ("stft_129x24", (129, 24))])
@pytest.mark.parametrize("seconds", [1.0, 4.5])  # shorter clips are tiled, longer ones cut
def test_recipe_shapes(tmp_path, recipe, shape, seconds):
    path = tmp_path / "a.wav"
    rng = np.random.default_rng(0)
    scipy.io.wavfile.write(path, 16000, (rng.standard_normal(int(16000 * seconds)) * 3000).astype(np.int16))
    spec = spectrogram(path, recipe)
    assert spec.shape == shape and get("audio_recipes", recipe).shape == shape
    assert np.isfinite(spec).all()


def test_stft_recipe_matches_torch_stft():
    """stft_257x188 = log(|STFT| + 1e-7) with n_fft 512, hop 353, centred zero padding, periodic Hann."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(22050 * 3) * 0.1).astype(np.float32)
    ours = get("audio_recipes", "stft_257x188")(x, 22050)
    ref = torch.stft(torch.from_numpy(x).double(), n_fft=512, hop_length=353, window=torch.hann_window(512, dtype=torch.float64),
                     center=True, pad_mode="constant", return_complex=True).abs()
    np.testing.assert_allclose(ours, np.log(ref.numpy() + 1e-7), atol=1e-3)


def test_tone_lands_in_its_frequency_bin():
    rate, f = 22050, 1000.0
    x = np.sin(2 * np.pi * f * np.arange(rate * 3) / rate).astype(np.float32) * 0.5
    spec = get("audio_recipes", "stft_257x188")(x, rate)
    assert abs(spec.mean(axis=1).argmax() - round(f / (rate / 512))) <= 1


def test_unknown_recipe_lists_registered():
    with pytest.raises(KeyError, match="stft_257x188"):
        get("audio_recipes", "mel_999")
    assert {"stft_257x188", "spec_257x299"} <= set(names("audio_recipes"))


def test_stereo_and_int_wav_are_mono_float(tmp_path):
    path = tmp_path / "s.wav"
    scipy.io.wavfile.write(path, 8000, np.full((800, 2), 16384, dtype=np.int16))
    x, rate = read_wav(path)
    assert rate == 8000 and x.ndim == 1 and abs(float(x.mean()) - 0.5) < 1e-3


def test_missing_wav_names_file(tmp_path):
    with pytest.raises(MediaError, match="missing.wav: audio file not found"):
        read_wav(tmp_path / "missing.wav")


def test_frames_at_one_fps_in_time_order(tmp_path):
    """Frame k of a 10 fps video has brightness 5 k; at 1 fps we must get seconds 0, 1, 2, 3 in order."""
    import av

    from mmlib.data.video import extract_frames

    path = tmp_path / "v.flv"
    with av.open(str(path), "w", format="flv") as c:
        s = c.add_stream("flv", rate=10)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        s.options = {"qscale": "1"}
        for k in range(40):
            img = np.full((32, 32, 3), 5 * k, dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    frames = extract_frames(path, size=16)
    assert frames.shape == (4, 3, 16, 16)
    brightness = frames.reshape(4, -1).mean(1)
    np.testing.assert_allclose(brightness, [0, 50, 100, 150], atol=4)


def test_segment_frames_train_random_within_segment_test_centre():
    count = torch.tensor([6, 3, 1, 7])
    centre = segment_frames(count, 3, train=False, generator=None)
    assert centre.tolist() == [[0, 2, 4], [0, 1, 2], [0, 0, 0], [0, 2, 5]]
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        pos = segment_frames(count, 3, train=True, generator=gen)
        start = (torch.arange(3) * count[:, None]) // 3
        end = torch.maximum(((torch.arange(3) + 1) * count[:, None]) // 3, start + 1)
        in_segment = (pos >= start) & (pos < end)
        assert in_segment.all() and (pos[2] == 0).all()  # a 1-frame clip repeats its only frame


def test_mirroring_a_flow_field_reflects_its_horizontal_component():
    # channel 0: dx = +0.3 (stored as 0.8, 0.5 = zero); channel 1: a left-to-right ramp that shows the mirroring
    ramp = torch.linspace(0.1, 0.9, 8).expand(8, 8)
    x = torch.stack([torch.full((8, 8), 0.8), ramp]).expand(64, 2, 2, 8, 8).clone()
    gen = torch.Generator().manual_seed(0)
    out = random_resized_crop(x, gen, scale=(1.0, 1.0), ratio=(1.0, 1.0), horizontal_channel=0)
    mirrored = out[:, 0, 1, 0, 0] > out[:, 0, 1, 0, -1]  # the ramp now falls from left to right
    assert 0 < mirrored.sum() < 64
    dx = out[:, :, 0]
    assert torch.allclose(dx[mirrored], torch.full_like(dx[mirrored], 0.2), atol=1e-5)
    assert torch.allclose(dx[~mirrored], torch.full_like(dx[~mirrored], 0.8), atol=1e-5)
    plain = random_resized_crop(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(plain[:, :, 0], torch.full_like(plain[:, :, 0], 0.8), atol=1e-5)  # images keep values
    assert torch.equal(plain[:, :, 1], out[:, :, 1])  # same draws: only the vector channel differs
