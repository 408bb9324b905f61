"""Audio recipes (shapes and the STFT itself), frame extraction order, and frame choice in the loader."""
from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.io.wavfile
import scipy.signal
import soundfile
import torch

from mmlib.data.audio import MediaError, load_audio, spectrogram, tile_to
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


def _clip(path, rate=16000, seconds=1.3, seed=1):
    """A generated clip: a chirp plus noise, written as 16-bit PCM."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    x = 0.4 * np.sin(2 * np.pi * (300 + 2000 * t) * t) + 0.05 * rng.standard_normal(t.size)
    soundfile.write(path, x.astype(np.float32), rate, subtype="PCM_16")
    return path


@pytest.mark.parametrize("recipe", ["stft_257x188", "stft_129x94", "stft_129x47", "stft_129x24"])
def test_stft_recipes_equal_librosa_reference(tmp_path, recipe):
    """The papers' loader: librosa.load(sr), tile x3, cut to 3 s, clip to [-1, 1], librosa.stft, log(|S| + 1e-7)."""
    path = _clip(tmp_path / "a.wav")
    r = get("audio_recipes", recipe)
    y, _ = librosa.load(path, sr=r.rate)
    y = np.clip(np.tile(y, 3)[: int(r.rate * 3)], -1, 1)
    ref = np.log(np.abs(librosa.stft(y, n_fft=r.n_fft, hop_length=r.hop)) + 1e-7)
    np.testing.assert_allclose(spectrogram(path, recipe), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("recipe", ["spec_257x299", "spec_257x1004"])
def test_scipy_recipes_equal_their_reference(tmp_path, recipe):
    """librosa.load at the recipe's rate, tiled, cut, then scipy.signal.spectrogram(512, 353) and log."""
    path = _clip(tmp_path / "a.wav")
    r = get("audio_recipes", recipe)
    y, _ = librosa.load(path, sr=r.rate)
    y = np.tile(y, max(r.tile or 0, -(-r.samples // len(y))))[: r.samples]
    ref = np.log(scipy.signal.spectrogram(y, nperseg=512, noverlap=353)[2] + 1e-7)
    if r.zscore:
        ref = (ref - ref.mean()) / (ref.std() + 1e-9)
    np.testing.assert_allclose(spectrogram(path, recipe), ref, rtol=0, atol=1e-4)


def test_tone_lands_in_its_frequency_bin():
    rate, f = 22050, 1000.0
    x = np.sin(2 * np.pi * f * np.arange(rate * 3) / rate).astype(np.float32) * 0.5
    spec = get("audio_recipes", "stft_257x188")(x, rate)
    assert abs(spec.mean(axis=1).argmax() - round(f / (rate / 512))) <= 1


def test_unknown_recipe_lists_registered():
    with pytest.raises(KeyError, match="stft_257x188"):
        get("audio_recipes", "mel_999")
    assert {"stft_257x188", "spec_257x299"} <= set(names("audio_recipes"))


@pytest.mark.parametrize("suffix, subtype", [("wav", "PCM_U8"), ("wav", "PCM_16"), ("wav", "PCM_24"),
                                             ("wav", "PCM_32"), ("wav", "FLOAT"), ("flac", "PCM_16"),
                                             ("flac", "PCM_24")])
def test_every_libsndfile_format_reads_as_the_same_mono_signal(tmp_path, suffix, subtype):
    """8-bit unsigned (no DC offset), 16/24/32-bit PCM, float and flac, stereo averaged to mono."""
    rate = 8000
    t = np.arange(rate) / rate
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / f"s.{suffix}"
    soundfile.write(path, np.stack([left, right], 1), rate, subtype=subtype)
    x, sr = load_audio(path)
    assert sr == rate and x.ndim == 1 and x.dtype == np.float32
    tolerance = 1e-2 if subtype == "PCM_U8" else 1e-4
    np.testing.assert_allclose(x, 0.375 * np.sin(2 * np.pi * 440 * t), atol=tolerance)
    assert abs(float(x.mean())) < tolerance


def test_unreadable_empty_and_non_finite_audio_name_the_file(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEnot audio")
    with pytest.raises(MediaError, match="bad.wav: not a readable audio file"):
        load_audio(bad)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), 8000)
    with pytest.raises(MediaError, match="empty.wav: audio file holds no samples"):
        load_audio(empty)
    nan = tmp_path / "nan.wav"
    soundfile.write(nan, np.array([0.1, np.nan, 0.2], np.float32), 8000, subtype="FLOAT")
    with pytest.raises(MediaError, match="nan.wav: audio holds non-finite samples"):
        load_audio(nan)


def test_missing_wav_names_file(tmp_path):
    with pytest.raises(MediaError, match="missing.wav: audio file not found"):
        load_audio(tmp_path / "missing.wav")


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


# ------------------------------------------------------------------------------- VGGSound and DGL §4.2 recipes
def test_vggsound_recipes_take_the_centre_5_seconds_of_the_tiled_clip():
    """stft_129x626: 16 kHz, tiled to 10 s, samples 2.5 s .. 7.5 s, stft 256 / 128 -> 129 x 626 (the public
    loader's random 5 s crop, fixed at its centre)."""
    recipe = get("audio_recipes", "stft_129x626")
    assert recipe.shape == (129, 626) and get("audio_recipes", "stft_129x79").shape == (129, 79)
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 3).astype(np.float32)
    spec = recipe(x, 16000)
    tiled = tile_to(x, 16000 * 10)[40000:120000]
    expected = np.log(np.abs(librosa.stft(tiled, n_fft=256, hop_length=128)) + 1e-7)
    assert spec.shape == (129, 626) and np.allclose(spec, expected, atol=1e-5)


@pytest.mark.parametrize("name, seconds, shape", [("stft_257x299", 3, (257, 299)),
                                                  ("stft_257x1004", 10, (257, 1004))])
def test_dgl_recipes_word_for_word(name, seconds, shape):
    """DGL §4.2: librosa, a window of 512 with an overlap of 353 (hop 159), not centred: 257 x 299 on 3 s and
    257 x 1004 on 10 s at 16 kHz. The scipy recipes of the same shapes keep that framing (nperseg 512, noverlap
    353), with scipy's window and power spectrum."""
    recipe = get("audio_recipes", name)
    x = np.random.default_rng(1).uniform(-0.5, 0.5, 16000 * 2).astype(np.float32)
    tiled = tile_to(x, 16000 * seconds)
    expected = np.log(np.abs(librosa.stft(tiled, n_fft=512, hop_length=512 - 353, center=False)) + 1e-7)
    assert recipe.shape == shape and np.allclose(recipe(x, 16000), expected, atol=1e-5)
    scipy_twin = get("audio_recipes", name.replace("stft", "spec"))
    assert (scipy_twin.nperseg, scipy_twin.noverlap, scipy_twin.shape) == (512, 353, shape)


def test_a_truncated_wav_is_refused_and_8_bit_wavs_have_no_dc_offset(tmp_path):
    """libsndfile reads a wav cut short as a shorter clip: the header's data size tells it. 8-bit wavs are
    unsigned; libsndfile centres them."""
    t = np.arange(16000) / 16000
    x = 0.5 * np.sin(2 * np.pi * 440 * t)
    scipy.io.wavfile.write(tmp_path / "a.wav", 16000, (x * 32767).astype(np.int16))
    data = (tmp_path / "a.wav").read_bytes()
    (tmp_path / "a.wav").write_bytes(data[: 44 + 16000])  # half the samples, the header unchanged
    with pytest.raises(MediaError, match=r"a\.wav: truncated wav: its header declares 32000 bytes of samples, "
                                         r"the file holds 16000"):
        load_audio(tmp_path / "a.wav")
    scipy.io.wavfile.write(tmp_path / "u8.wav", 16000, np.round(x * 127 + 128).astype(np.uint8))
    y, _ = load_audio(tmp_path / "u8.wav")
    assert abs(float(y.mean())) < 1e-3 and abs(float(y.max()) - 0.5) < 0.01


def test_a_non_finite_cache_is_refused_naming_the_clip(tmp_path):
    from mmlib.data.cache import CacheError, TensorCache

    audio = torch.zeros(3, 1, 4, 4)
    audio[1, 0, 2, 2] = float("nan")
    cache = TensorCache({"audio": audio, "label": torch.tensor([0, 1, 0])}, {"clips": ["x", "y", "z"]})
    with pytest.raises(CacheError, match=r"c\.pt: audio of clip\(s\) y hold NaN or inf"):
        cache.save(tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()
