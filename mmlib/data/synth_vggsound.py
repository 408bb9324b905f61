"""``synth_vggsound``: the embedded VGGSound stand-in, written in the public layout (``vggsound.csv`` and the
release's ``video/<ytid>_<start:06d>.mp4`` clips: MPEG-4 video with an AAC audio track) and prepared by the
real loader (``mmlib.data.vggsound``).

Seeded and procedural, with many classes (the real set has 309; ``classes`` sets how many, 2 .. 400). The cues
are synth_ks's (its generator pieces are called here): a class is a pair of codes on two grids; the audio
spells it as a chord (low tone on one pitch grid, high tone on another), the video as a drifting grating whose
hue and orientation encode the pair. Each cue is present with its own probability (``audio_present``,
``visual_present``), otherwise replaced by a class-free distractor half-way between grid values, and
``shared_absence`` is the probability that a clip carries neither (its audio and visual presences are then
``(1 - shared_absence) * <m>_present``). ``audio_snr_db`` sets the chord over white noise; ``visual_contrast``
the grating's amplitude and ``visual_noise`` the per-pixel noise. Audio is meant as the fast, partial
modality, video as the slow one, both informative alone: calibration to DGL Table 1's VGGSound rows
(audio-only 45.1, visual-only 30.7, concat 47.9; inside concat audio 43.2, visual 20.6) is done on
params.yaml's generator fields. With many classes the pitch grid gets crowded: ``audio_step_hz`` must keep the
high tone inside the band (checked against 16 kHz audio, the rate of the VGGSound recipes).

Clips last ``seconds`` (the real ones 10 s; at least 3, the loader's minimum of frames at 1 fps) and are
written at ``video_fps``; the loader keeps 3 frames of the 1 fps ones. Every tenth class name holds a comma,
so the csv is written with quoted fields as the real one is.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import from_dict
from ..registry import register
from .cache import atomic_write_bytes, ensure_generated, is_prepared
from .synth_ks import LOW_TONE_HZ, _audio, _frames, clip_ids, code_grid
from .vggsound import CSV_FILE, MIN_FRAMES, VIDEO_DIR, VGGSound, clip_name

GENERATOR_VERSION = 1  # bump when a change to the generator changes the media it writes
STAMP = "synth_vggsound.txt"
MAX_CLASSES = 400
RECIPE_RATE = 16000  # the VGGSound recipes' sample rate (stft_129x626, stft_129x79)


@dataclass
class SynthVGGSoundConfig:
    clips: int = 1200  # total clips (train + test); VGGSound has ~183k
    classes: int = 40  # the real set has 309
    test_fraction: float = 0.2
    seed: int = 0
    seconds: float = 5.0  # clip length (the real clips last 10 s); >= 3 (3 frames at 1 fps)
    sample_rate: int = 16000
    video_fps: int = 2  # frames per second written to the mp4 (the loader keeps 1 per second)
    frame_size: int = 48  # square frames, pixels
    audio_present: float = 0.6  # probability that a clip carries its class's chord
    audio_snr_db: float = 10.0  # chord power over noise power
    audio_step_hz: float = 130.0  # pitch grid spacing (62.5 Hz: one bin of the 16 kHz, n_fft 256 recipes)
    visual_present: float = 0.75  # probability that a clip carries its class's hue and orientation
    visual_contrast: float = 0.3  # grating amplitude (pixels in [0, 1]); the hue's colour cast is half of it
    visual_noise: float = 0.15  # std of per-pixel noise
    shared_absence: float = 0.0  # probability that a clip carries no cue in either modality

    def fingerprint(self) -> str:
        blob = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def check(self) -> None:
        if not 2 <= self.classes <= MAX_CLASSES:
            raise ValueError(f"synth_vggsound.classes must be in [2, {MAX_CLASSES}], got {self.classes}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"synth_vggsound.test_fraction must be in (0, 1), got {self.test_fraction}")
        n_test = int(round(self.test_fraction * self.clips))
        if n_test < self.classes or self.clips - n_test < self.classes:
            raise ValueError(f"synth_vggsound: clips={self.clips} with test_fraction={self.test_fraction} "
                             f"leaves fewer train or test clips than classes (both splits must hold every class)")
        if self.seconds < MIN_FRAMES or self.frame_size < 8 or self.video_fps < 1:
            raise ValueError(f"synth_vggsound: seconds must be >= {MIN_FRAMES} (the loader keeps clips with "
                             f"at least {MIN_FRAMES} frames at 1 fps), frame_size >= 8, video_fps >= 1")
        for name in ("audio_present", "visual_present", "shared_absence"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"synth_vggsound.{name} must be in [0, 1], got {getattr(self, name)}")
        n_a, n_b = code_grid(self.classes)
        rate = min(self.sample_rate, RECIPE_RATE)
        if LOW_TONE_HZ + self.audio_step_hz * (n_a + n_b + 1) > 0.45 * rate:
            raise ValueError(f"synth_vggsound.audio_step_hz={self.audio_step_hz} puts the high tone of "
                             f"{self.classes} classes above the band of {rate} Hz audio")


def class_names(classes: int) -> list[str]:
    return [f"event {k:03d}" + (", outdoors" if k % 10 == 3 else "") for k in range(classes)]


def youtube_ids(n: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """Unique ``(11-character id, start seconds)`` pairs (synth_ks's ``<ytid>_<start>_<end>`` ids, split)."""
    return [(ytid, int(start)) for ytid, start, _ in (name.rsplit("_", 2) for name in clip_ids(n, rng))]


def write_mp4(path: Path, frames: np.ndarray, fps: int, audio: np.ndarray, rate: int) -> None:
    """(T, S, S, 3) uint8 frames as MPEG-4 video and int16 mono samples as AAC, in one mp4."""
    import av

    def write(tmp: Path) -> None:
        with av.open(str(tmp), "w", format="mp4") as container:
            video = container.add_stream("mpeg4", rate=fps)
            video.width, video.height = frames.shape[2], frames.shape[1]
            video.pix_fmt = "yuv420p"
            video.options = {"qscale": "3"}
            sound = container.add_stream("aac", rate=rate)
            sound.layout = "mono"
            for f in frames:
                for packet in video.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    container.mux(packet)
            samples = (audio.astype(np.float32) / 32768.0)[None]
            chunk = 1024
            for k in range(0, samples.shape[1], chunk):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, k:k + chunk]),
                                                   format="fltp", layout="mono")
                frame.sample_rate, frame.pts = rate, k
                for packet in sound.encode(frame):
                    container.mux(packet)
            for stream in (video, sound):
                for packet in stream.encode():
                    container.mux(packet)

    atomic_write_bytes(path, write)


def generate(root: str | Path, cfg: SynthVGGSoundConfig) -> Path:
    """Write the dataset under ``root`` (video/*.mp4, vggsound.csv, the stamp)."""
    cfg.check()
    root = Path(root)
    # one random stream for the dataset's structure and one per modality (synth_ks's layout of streams)
    rng, audio_rng, visual_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(3))
    order = rng.permutation(cfg.clips)
    n_test = int(round(cfg.test_fraction * cfg.clips))
    # every class in both splits: labels cycle through the classes within each split
    split_of = np.empty(cfg.clips, dtype=object)
    split_of[order[:n_test]], split_of[order[n_test:]] = "test", "train"
    labels = np.empty(cfg.clips, dtype=int)
    for split in ("train", "test"):
        members = np.flatnonzero(split_of == split)
        cycle = np.arange(len(members)) % cfg.classes
        rng.shuffle(cycle)
        labels[members] = cycle
    ambiguous = rng.random(cfg.clips) < cfg.shared_absence
    ids = youtube_ids(cfg.clips, rng)
    names = class_names(cfg.classes)
    no_cue = dataclasses.replace(cfg, audio_present=0.0, visual_present=0.0)
    for (ytid, start), label, none in zip(ids, labels, ambiguous):
        gen = no_cue if none else cfg  # synth_ks's pieces read their presence from the config
        audio = _audio(gen, int(label), audio_rng, cfg.seconds)
        frames = _frames(gen, int(label), visual_rng, int(math.floor(cfg.seconds * cfg.video_fps)))
        write_mp4(root / VIDEO_DIR / f"{clip_name(ytid, start)}.mp4", frames, cfg.video_fps, audio,
                  cfg.sample_rate)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for (ytid, start), label, split in zip(ids, labels, split_of):
        writer.writerow([ytid, start, names[label], split])
    atomic_write_bytes(root / CSV_FILE, lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))
    atomic_write_bytes(root / STAMP, lambda tmp: tmp.write_text(cfg.fingerprint() + "\n"))  # last: complete
    return root


@register("datasets", "synth_vggsound")
class SynthVGGSound(VGGSound):
    """Embedded VGGSound stand-in: generated on first use, then prepared by the real VGGSound path."""

    name = "synth_vggsound"
    embedded = True

    def ensure_prepared(self, root: str | Path, recipe: str, image_size: int, skip_bad: bool = False,
                        generator: dict | None = None, **_) -> Path:
        cfg = from_dict(SynthVGGSoundConfig, generator or {}, "datasets.synth_vggsound")
        cfg.check()
        root = Path(root)
        ensure_generated(root, STAMP, cfg, generate, self.name)
        path = self.cache_path(root, recipe, image_size)
        if not is_prepared(path):
            self.prepare(root, recipe, image_size, skip_bad)
        return path
