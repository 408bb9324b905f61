"""Audio loading and named spectrogram recipes.

Recipes differ between the public repositories and change results by several points, so each one is named and
a run records the one it used:

- ``stft_257x188``  22.05 kHz, tiled x3 and cut to 3 s, clipped to [-1, 1], STFT n_fft 512 hop 353 (centred,
  zero padding, periodic Hann), log(|S| + 1e-7)  (OGM-GE / AMSS / DGL CREMA-D loaders);
- ``spec_257x299``  16 kHz, tiled and cut to 3 s, scipy.signal.spectrogram(nperseg 512, noverlap 353), log(S + 1e-7);
- ``spec_257x1004`` 22.05 kHz, tiled x10, first 160,000 samples, scipy spectrogram 512/353, log, per-clip z-score
  (PMR's recipe);
- ``stft_129x94``   11.025 kHz, 3 s, STFT n_fft 256 hop 353: the small recipe of the CPU profiles;
- ``stft_129x47``   as stft_129x94 with hop 706: half the time steps;
- ``stft_129x24``   as stft_129x94 with hop 1412: a quarter of the time steps, for the many-run CPU tables.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import scipy.io.wavfile
import scipy.signal

from ..registry import get, register


class MediaError(ValueError):
    """A media file that cannot be used; the message names the file."""


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate. Raises MediaError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: audio file not found")
    try:
        rate, data = scipy.io.wavfile.read(path)
    except Exception as err:  # scipy raises ValueError / EOFError / struct.error on corrupt headers
        raise MediaError(f"{path}: not a readable wav file ({err})") from err
    if data.size == 0:
        raise MediaError(f"{path}: wav file holds no samples")
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    data = data.astype(np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1)
    return data, int(rate)


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return x
    g = gcd(rate, target)
    return scipy.signal.resample_poly(x, target // g, rate // g).astype(np.float32)


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

    @property
    def shape(self) -> tuple[int, int]:
        n = int(self.rate * self.seconds)
        return self.n_fft // 2 + 1, 1 + n // self.hop

    def __call__(self, x: np.ndarray, rate: int) -> np.ndarray:
        n = int(self.rate * self.seconds)
        x = np.clip(tile_to(resample(x, rate, self.rate), n, self.tile), -1.0, 1.0)
        pad = self.n_fft // 2
        x = np.pad(x, (pad, pad))
        frames = np.lib.stride_tricks.sliding_window_view(x, self.n_fft)[:: self.hop]
        window = scipy.signal.get_window("hann", self.n_fft, fftbins=True).astype(np.float32)
        spec = np.abs(np.fft.rfft(frames * window, axis=1)).T
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
    "stft_129x94": StftRecipe(rate=11025, seconds=3.0, n_fft=256, hop=353, tile=3),
    "stft_129x47": StftRecipe(rate=11025, seconds=3.0, n_fft=256, hop=706, tile=3),
    "stft_129x24": StftRecipe(rate=11025, seconds=3.0, n_fft=256, hop=1412, tile=3),
}.items():
    register("audio_recipes", _name)(_recipe)


def spectrogram(path: str | Path, recipe: str) -> np.ndarray:
    """Spectrogram (freq x time) of a wav file under a named recipe."""
    fn = get("audio_recipes", recipe)
    x, rate = read_wav(path)
    return fn(x, rate)
