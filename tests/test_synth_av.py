"""synth_av's audio cues: where the class lives in the sound (chord: pitch; melody: the order of shared notes)."""
from __future__ import annotations

import numpy as np
import pytest

from mmlib.data.synth_av import MELODIES, SynthAVConfig, _audio, generate


def spectrum(x: np.ndarray) -> np.ndarray:
    return np.abs(np.fft.rfft(x.astype(np.float64)))


def thirds(x: np.ndarray) -> list[np.ndarray]:
    n = len(x) // 3
    return [spectrum(x[k * n + n // 10:(k + 1) * n - n // 10]) for k in range(3)]  # away from the note changes


def clip(cue: str, label: int, seed: int = 0, **kw) -> np.ndarray:
    cfg = SynthAVConfig(audio_cue=cue, audio_present=1.0, audio_snr_db=30.0, **kw)
    return _audio(cfg, label, np.random.default_rng(seed))


def peak_hz(spec: np.ndarray, below_hz: float = 600.0, rate: int = 16000) -> float:
    """Strongest frequency under ``below_hz``: the lower tone of each two-tone chord (the upper is 19 semitones up)."""
    hz = np.arange(len(spec)) * rate / (2 * (len(spec) - 1))
    band = (hz > 50) & (hz < below_hz)
    return float(hz[band][np.argmax(spec[band])])


def centroid_hz(x: np.ndarray, rate: int = 16000) -> float:
    spec = spectrum(x)
    return float((spec * np.arange(len(spec))).sum() / spec.sum()) * rate / (2 * (len(spec) - 1))


def test_chord_pitch_tells_the_class():
    low, high = (clip("chord", k) for k in (0, 5))
    assert peak_hz(spectrum(low)) < peak_hz(spectrum(high), below_hz=2000)


def test_melody_classes_share_their_notes_and_differ_in_order():
    """Classes 0 and 5 play the same three notes in opposite orders: equal long-run spectra, reversed thirds."""
    up, down = clip("melody", 0), clip("melody", 5)
    assert MELODIES[0] == tuple(reversed(MELODIES[5]))
    first_up, *_, last_up = [peak_hz(s) for s in thirds(up)]
    first_down, *_, last_down = [peak_hz(s) for s in thirds(down)]
    assert first_up < last_up and first_down > last_down
    assert first_up == pytest.approx(last_down, rel=0.02) and last_up == pytest.approx(first_down, rel=0.02)
    assert centroid_hz(up) == pytest.approx(centroid_hz(down), rel=0.05)  # no class in the time-averaged spectrum


def test_melody_notes_follow_the_class_order():
    pitches = sorted({round(peak_hz(s)) for s in thirds(clip("melody", 0))})
    for label, order in enumerate(MELODIES):
        heard = [peak_hz(s) for s in thirds(clip("melody", label, seed=label))]
        assert [int(np.argmin([abs(h - p) for p in pitches])) for h in heard] == list(order)


def test_chord_media_do_not_depend_on_the_new_field():
    """The default cue is the chord; naming it explicitly writes the same samples."""
    a = _audio(SynthAVConfig(), 3, np.random.default_rng(7))
    b = _audio(SynthAVConfig(audio_cue="chord"), 3, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_unknown_audio_cue_is_refused(tmp_path):
    with pytest.raises(ValueError, match="audio_cue must be chord or melody, got 'song'"):
        generate(tmp_path, SynthAVConfig(clips=12, audio_cue="song"))
