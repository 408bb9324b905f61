"""``synth_av``: the embedded audio-visual dataset, written in the public CREMA-D layout.

Seeded and procedural. Each clip has a class-tied audio cue and a class-tied visual cue. The audio cue is either
a ``chord`` (two tones whose pitches encode the class: readable from the spectrum of an untrained encoder) or a
``melody`` (three chords shared by all classes, played in a class-specific order: the time-averaged spectrum carries
no class, so the audio encoder has to learn it; the demo default, params.yaml). The visual cue is a drifting
grating whose orientation in [0, 90] degrees encodes the class (so horizontal flips keep classes apart). Each cue
is present in a clip with its own probability and otherwise replaced by a class-free distractor, so the
modalities are complementary; the audio cue is learned faster and present more often, so audio dominates and
naive joint training under-trains the visual encoder. Everything that sets the difficulty is a field of
``SynthAVConfig`` (params.yaml: ``base.data.generator``).
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io.wavfile

from ..config import from_dict
from ..registry import register
from .cache import atomic_write_bytes, ensure_generated, is_prepared
from .crema_d import LABELS, CremaD

GENERATOR_VERSION = 3  # bump when a change to the generator changes the media it writes
SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
LEVELS = ("LO", "MD", "HI", "XX")


@dataclass
class SynthAVConfig:
    clips: int = 1200  # total clips (train + test)
    classes: int = 6  # the first ``classes`` CREMA-D labels
    test_fraction: float = 0.1
    seed: int = 0
    seconds: float = 3.0  # mean clip length; each clip lasts seconds * U(0.8, 1.2)
    sample_rate: int = 16000
    video_size: int = 64  # square frames, pixels
    video_fps: int = 5
    audio_present: float = 0.8  # probability that a clip carries its class's audio cue
    audio_snr_db: float = 0.0  # cue power over noise power
    audio_pitch_step: int = 3  # semitones between neighbouring classes' chords (smaller: harder to tell apart)
    audio_distractor: str = "neutral"  # absent audio cue: neutral (a chord of no class) | other_class (another class's)
    audio_cue: str = "chord"  # chord: pitches encode the class | melody: the order of three shared notes does
    visual_present: float = 0.7  # probability that a clip carries its class's visual cue
    # probability that a clip carries neither cue (an ambiguous clip, ambiguous in voice and face alike): the
    # modalities then share their hard clips, and fusing them gains less than independent cues would
    shared_absence: float = 0.0
    visual_contrast: float = 0.25  # grating amplitude (pixel values in [0, 1])
    visual_noise: float = 0.25  # std of per-pixel noise

    def fingerprint(self) -> str:
        import hashlib
        import json
        blob = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def clip_names(n: int, labels: list[int]) -> list[str]:
    """CREMA-D-style unique names ``<actor>_<sentence>_<LABEL>_<level>``."""
    per_actor = len(SENTENCES) * len(LEVELS)
    if n > 91 * per_actor:
        raise ValueError(f"synth_av supports at most {91 * per_actor} clips, got {n}")
    return [f"{1001 + i // per_actor}_{SENTENCES[(i // len(LEVELS)) % len(SENTENCES)]}_"
            f"{LABELS[labels[i]]}_{LEVELS[i % len(LEVELS)]}" for i in range(n)]


MELODIES = tuple(itertools.permutations(range(3)))  # class k plays the three notes in the order MELODIES[k]
assert len(MELODIES) == len(LABELS)  # one order per CREMA-D class


def _chord(semitones: float) -> np.ndarray:
    """Two-tone chord: the pitch ``semitones`` above 220 Hz and the one 19 semitones (an octave and a fifth) higher."""
    return 220.0 * 2 ** (np.array([semitones, semitones + 19]) / 12)


def _tones(pitches, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in pitches)


def _melody(cfg: SynthAVConfig, label: int, present: bool, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Three chords in a row, one per third of the clip. Every class plays the same three chords, so the
    time-averaged spectrum carries no class; only their order does (a distractor plays three off-grid chords)."""
    notes = [cfg.audio_pitch_step * 2 * i + 2 + (0.0 if present else 0.5 + cfg.audio_pitch_step) for i in range(3)]
    order = MELODIES[label] if present else rng.permutation(3)
    part = np.minimum((3 * t / t[-1]).astype(int), 2)
    x = np.zeros_like(t)
    for slot, note in enumerate(order):
        x[part == slot] = _tones(_chord(notes[note]) * rng.uniform(0.99, 1.01), t[part == slot], rng)
    return x


def _audio(cfg: SynthAVConfig, label: int, rng: np.random.Generator, cues: bool = True) -> np.ndarray:
    n = int(cfg.sample_rate * cfg.seconds * rng.uniform(0.8, 1.2))
    t = np.arange(n) / cfg.sample_rate
    present = rng.random() < cfg.audio_present and cues
    if not present and cfg.audio_distractor == "other_class":  # a misleading cue: another class's cue
        label, present = (label + 1 + rng.integers(0, cfg.classes - 1)) % cfg.classes, True
    if cfg.audio_cue == "melody":
        return _finish(cfg, _envelope(t, rng) * _melody(cfg, label, present, t, rng), rng)
    if present:  # class chord on a semitone grid
        pitches = _chord(cfg.audio_pitch_step * label + 2)
    else:  # distractor chord between the class chords
        pitches = _chord(rng.integers(0, cfg.audio_pitch_step * cfg.classes) + 0.5)
    pitches = pitches * rng.uniform(0.99, 1.01)
    return _finish(cfg, _envelope(t, rng) * _tones(pitches, t, rng), rng)


def _envelope(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(1, 4) * t + rng.uniform(0, 2 * np.pi))


def _finish(cfg: SynthAVConfig, cue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit-power cue plus white noise at ``audio_snr_db``, as 16-bit PCM."""
    cue = cue / (np.sqrt(np.mean(cue**2)) + 1e-9)
    noise = rng.standard_normal(len(cue)) * 10 ** (-cfg.audio_snr_db / 20)
    x = cue + noise
    return (0.3 * x / np.abs(x).max() * 32767).astype(np.int16)


def _video(cfg: SynthAVConfig, label: int, rng: np.random.Generator, seconds: float,
           cues: bool = True) -> np.ndarray:
    n = max(1, int(round(seconds * cfg.video_fps)))
    s = cfg.video_size
    yy, xx = np.mgrid[0:s, 0:s] / s
    present = rng.random() < cfg.visual_present and cues
    # orientations in [0, pi/2]: a horizontal flip maps theta to pi - theta, so classes stay distinct under flips
    step = (np.pi / 2) / (cfg.classes - 1)
    angle = step * label if present else step * (rng.integers(0, cfg.classes - 1) + 0.5)
    angle += rng.normal(0, 0.05)
    freq = rng.uniform(3.0, 5.0)
    phase0, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 2.0)
    background = rng.uniform(0.3, 0.7, size=3)
    tint = rng.uniform(0.5, 1.0, size=3)
    proj = np.cos(angle) * xx + np.sin(angle) * yy
    frames = []
    for k in range(n):
        grating = np.sin(2 * np.pi * freq * proj + phase0 + speed * k)
        img = background + cfg.visual_contrast * grating[..., None] * tint
        img = img + rng.normal(0, cfg.visual_noise, size=(s, s, 3))
        frames.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
    return np.stack(frames)


def _write_flv(path: Path, frames: np.ndarray, fps: int) -> None:
    import av

    def write(tmp: Path) -> None:
        with av.open(str(tmp), "w", format="flv") as container:
            stream = container.add_stream("flv", rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"qscale": "2"}
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    atomic_write_bytes(path, write)


def generate(root: str | Path, cfg: SynthAVConfig) -> Path:
    """Write the dataset under ``root`` (AudioWAV/, VideoFlash/, train.csv, test.csv, synth_av.txt)."""
    root = Path(root)
    if cfg.classes > len(LABELS) or cfg.classes < 2:
        raise ValueError(f"synth_av.classes must be in [2, {len(LABELS)}], got {cfg.classes}")
    if cfg.audio_cue not in ("chord", "melody"):
        raise ValueError(f"synth_av.audio_cue must be chord or melody, got {cfg.audio_cue!r}")
    if cfg.audio_distractor not in ("neutral", "other_class"):
        raise ValueError(f"synth_av.audio_distractor must be neutral or other_class, got {cfg.audio_distractor!r}")
    # one random stream for the dataset's structure and one per modality: a modality's parameters change its
    # own media only, so the stand-in can be calibrated one modality at a time
    rng, audio_rng, visual_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(3))
    labels = [i % cfg.classes for i in range(cfg.clips)]
    rng.shuffle(labels)
    names = clip_names(cfg.clips, labels)
    (root / "AudioWAV").mkdir(parents=True, exist_ok=True)
    (root / "VideoFlash").mkdir(parents=True, exist_ok=True)
    ambiguous = rng.random(cfg.clips) < cfg.shared_absence
    for name, label, no_cue in zip(names, labels, ambiguous):
        audio = _audio(cfg, label, audio_rng, cues=not no_cue)
        atomic_write_bytes(root / "AudioWAV" / f"{name}.wav",
                           lambda tmp: scipy.io.wavfile.write(tmp, cfg.sample_rate, audio))
        _write_flv(root / "VideoFlash" / f"{name}.flv",
                   _video(cfg, label, visual_rng, len(audio) / cfg.sample_rate, cues=not no_cue),
                   cfg.video_fps)
    order = rng.permutation(cfg.clips)
    n_test = int(round(cfg.test_fraction * cfg.clips))
    for split, idx in (("test", order[:n_test]), ("train", order[n_test:])):
        rows = "".join(f"{names[i]},{LABELS[labels[i]]}\n" for i in sorted(idx))
        atomic_write_bytes(root / f"{split}.csv", lambda tmp, rows=rows: tmp.write_text(rows))
    stamp = root / "synth_av.txt"  # written last: its presence means the media are complete
    atomic_write_bytes(stamp, lambda tmp: tmp.write_text(cfg.fingerprint() + "\n"))
    return root


@register("datasets", "synth_av")
class SynthAV(CremaD):
    """Embedded CREMA-D stand-in: generated on first use, then prepared by the real CREMA-D path."""

    name = "synth_av"
    embedded = True

    def ensure_prepared(self, root: str | Path, recipe: str, image_size: int, skip_bad: bool = False,
                        generator: dict | None = None, **_) -> Path:
        cfg = from_dict(SynthAVConfig, generator or {}, "datasets.synth_av")
        root = Path(root)
        ensure_generated(root, "synth_av.txt", cfg, generate, "synth_av")
        path = self.cache_path(root, recipe, image_size)
        if not is_prepared(path):
            self.prepare(root, recipe, image_size, skip_bad)
        return path
