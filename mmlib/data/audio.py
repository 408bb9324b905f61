"""Audio loading (librosa) and named spectrogram recipes.

Recipes differ between the public repositories and change results by several points, so each one is named and
a run records the one it used. Every recipe loads and resamples with librosa (``librosa.load(path, sr=rate)``:
libsndfile formats, mono by channel mean, soxr resampling), as the public loaders do; the spectrogram is
``librosa.stft`` or, where the public recipe is scipy's own, ``scipy.signal.spectrogram``:

- ``stft_257x188``  22.05 kHz, tiled x3 and cut to 3 s, clipped to [-1, 1], ``librosa.stft`` n_fft 512 hop 353
  (centred, librosa's defaults), log(|S| + 1e-7)  (OGM-GE / AMSS / DGL CREMA-D loaders);
- ``spec_257x299``  16 kHz, tiled and cut to 3 s, scipy.signal.spectrogram(nperseg 512, noverlap 353),
  log(S + 1e-7) (scipy's defaults: a Tukey window, the power spectral density; DGL §4.2's shape and
  framing, not its librosa);
- ``spec_257x1004`` 22.05 kHz, tiled x10, first 160,000 samples, scipy spectrogram 512/353, log, per-clip z-score
  (PMR's recipe);
- ``stft_257x299``  DGL §4.2 word for word for CREMA-D: librosa, a window of 512 with an overlap of 353,
  i.e. ``librosa.stft`` n_fft 512 hop 159, not centred (the only framing that gives 299 columns), of the clip
  at 16 kHz tiled and cut to 3 s, clipped to [-1, 1], log(|S| + 1e-7) (the DGL code uses stft_257x188);
- ``stft_257x1004`` the same for Kinetics-Sounds / VGGSound: 16 kHz, 10 s (a whole clip), n_fft 512 hop 159,
  not centred (the DGL code uses stft_129x626);
- ``stft_129x94``   11.025 kHz, 3 s, ``librosa.stft`` n_fft 256 hop 353: the small recipe of the CPU profiles;
- ``stft_129x47``   as stft_129x94 with hop 706: half the time steps;
- ``stft_129x24``   as stft_129x94 with hop 1412: a quarter of the time steps, for the many-run CPU tables;
- ``stft_129x626``  16 kHz, tiled to 10 s, the centre 5 s (2.5 s to 7.5 s), clipped to [-1, 1],
  ``librosa.stft`` n_fft 256 hop 128, log(|S| + 1e-7): the public VGGSound / DGL-KS loader's recipe, whose
  random 5 s crop (drawn anew every epoch, at test too) becomes the fixed centre crop, as the cache holds one
  spectrogram per clip;
- ``stft_129x79``   as stft_129x626 with hop 1024: the small VGGSound recipe of the CPU profiles.
"""
from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import scipy.signal

from ..registry import get, register


class MediaError(ValueError):
    """A media file that cannot be used; the message names the file."""


def wav_shortfall(path: Path) -> tuple[int, int] | None:
    """``(declared, present)`` bytes of a RIFF wav's sample data when the file holds fewer than its header
    declares (a truncated file, which libsndfile reads silently as a shorter clip); None otherwise. A size of 0
    or 0xFFFFFFFF is a streamed wav's "unknown" and is not checked."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            chunk, length = struct.unpack("<4sI", fh.read(8))
            if chunk == b"data":
                present = size - pos - 8
                return (length, present) if length not in (0, 0xFFFFFFFF) and length > present else None
            pos += 8 + length + (length & 1)
    return None


def load_audio(path: str | Path, rate: int | None = None) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their rate: ``librosa.load(path, sr=rate)`` (``None``: the file's own rate).
    Raises MediaError naming the file when it is missing, unreadable, truncated (a wav holding fewer samples than
    its header declares), empty or holds non-finite samples. 8-bit wavs are unsigned: libsndfile centres them
    (no DC offset)."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: audio file not found")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty audio file (0 bytes)")
    short = wav_shortfall(path)
    if short:
        raise MediaError(f"{path}: truncated wav: its header declares {short[0]} bytes of samples, the file holds "
                         f"{short[1]}")
    try:
        with warnings.catch_warnings():  # librosa warns before its audioread fallback; the error below says it
            warnings.simplefilter("ignore")
            x, sr = librosa.load(path, sr=rate, mono=True)
    except librosa.util.exceptions.ParameterError as err:  # librosa validates the decoded buffer
        if "finite" in str(err):
            raise MediaError(f"{path}: audio holds non-finite samples (NaN or inf)") from err
        raise MediaError(f"{path}: not usable audio ({err})") from err
    except Exception as err:  # soundfile / audioread raise many types on corrupt or unknown files
        reason = str(err) or "libsndfile cannot decode it and no other audio backend is installed"
        raise MediaError(f"{path}: not a readable audio file ({reason})") from err
    if x.size == 0:
        raise MediaError(f"{path}: audio file holds no samples")
    return x.astype(np.float32, copy=False), int(sr)


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``librosa.resample`` with librosa.load's default resampler (what ``load_audio(path, target)`` does)."""
    if rate == target:
        return x
    return librosa.resample(x, orig_sr=rate, target_sr=target).astype(np.float32)


def tile_to(x: np.ndarray, n: int, times: int | None = None) -> np.ndarray:
    """Repeat the clip (``times`` copies, or as many as needed) and cut to ``n`` samples."""
    reps = times if times is not None else -(-n // len(x))
    y = np.tile(x, max(reps, -(-n // len(x))))
    return y[:n]


@dataclass(frozen=True)
class StftRecipe:
    rate: int
    seconds: float
    n_fft: int
    hop: int
    tile: int | None = None
    skip: float = 0.0  # seconds dropped from the start of the tiled clip before the ``seconds`` kept
    center: bool = True  # librosa's default: frames centred on hop multiples (the signal padded by n_fft / 2)

    @property
    def shape(self) -> tuple[int, int]:
        n = int(self.rate * self.seconds)
        return self.n_fft // 2 + 1, 1 + (n if self.center else n - self.n_fft) // self.hop

    def __call__(self, x: np.ndarray, rate: int) -> np.ndarray:
        n, skip = int(self.rate * self.seconds), int(self.rate * self.skip)
        x = np.clip(tile_to(resample(x, rate, self.rate), skip + n, self.tile)[skip:], -1.0, 1.0)
        spec = np.abs(librosa.stft(x, n_fft=self.n_fft, hop_length=self.hop, center=self.center))
        return np.log(spec + 1e-7).astype(np.float32)


@dataclass(frozen=True)
class ScipySpecRecipe:
    rate: int
    samples: int
    nperseg: int = 512
    noverlap: int = 353
    tile: int | None = None
    zscore: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return self.nperseg // 2 + 1, (self.samples - self.nperseg) // (self.nperseg - self.noverlap) + 1

    def __call__(self, x: np.ndarray, rate: int) -> np.ndarray:
        x = tile_to(resample(x, rate, self.rate), self.samples, self.tile)
        _, _, spec = scipy.signal.spectrogram(x, nperseg=self.nperseg, noverlap=self.noverlap)
        spec = np.log(spec + 1e-7)
        if self.zscore:
            spec = (spec - spec.mean()) / (spec.std() + 1e-9)
        return spec.astype(np.float32)


for _name, _recipe in {
    "stft_257x188": StftRecipe(rate=22050, seconds=3.0, n_fft=512, hop=353, tile=3),
    "spec_257x299": ScipySpecRecipe(rate=16000, samples=48000),
    "spec_257x1004": ScipySpecRecipe(rate=22050, samples=160000, tile=10, zscore=True),
    "stft_257x299": StftRecipe(rate=16000, seconds=3.0, n_fft=512, hop=159, center=False),
    "stft_257x1004": StftRecipe(rate=16000, seconds=10.0, n_fft=512, hop=159, center=False),
    "stft_129x94": StftRecipe(rate=11025, seconds=3.0, n_fft=256, hop=353, tile=3),
    "stft_129x47": StftRecipe(rate=11025, seconds=3.0, n_fft=256, hop=706, tile=3),
    "stft_129x24": StftRecipe(rate=11025, seconds=3.0, n_fft=256, hop=1412, tile=3),
    "stft_129x626": StftRecipe(rate=16000, seconds=5.0, n_fft=256, hop=128, skip=2.5),
    "stft_129x79": StftRecipe(rate=16000, seconds=5.0, n_fft=256, hop=1024, skip=2.5),
}.items():
    register("audio_recipes", _name)(_recipe)


def spectrogram(path: str | Path, recipe: str) -> np.ndarray:
    """Spectrogram (freq x time) of an audio file under a named recipe, loaded at the recipe's rate."""
    fn = get("audio_recipes", recipe)
    return fn(*load_audio(path, fn.rate))
