"""VGGSound in its public layout (vggsound.csv + video/<ytid>_<start:06d>.mp4, or the DGL preprocessing's wav and
1 fps frames): csv parsing with quoted labels, mp4 audio (mono as librosa makes it) + frames, the public loader's
rules (train classes equal to test's; clips with at least 3 frames; 3 frames kept), bad-layout errors, the
synth_vggsound generator (determinism, its knobs), the CLI and a tiny training run."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile
import torch
from PIL import Image

from mmlib import experiments
from mmlib.__main__ import main
from mmlib.config import ExperimentConfig, from_dict
from mmlib.data.audio import MediaError, spectrogram
from mmlib.data.cache import TensorCache
from mmlib.data.layout import LayoutError
from mmlib.data.synth_ks import LOW_TONE_HZ, code_grid
from mmlib.data.synth_vggsound import STAMP, SynthVGGSoundConfig, class_names, generate, write_mp4
from mmlib.data.vggsound import (build_cache, decode_mp4_audio, extracted_paths, kept_frames, read_csv,
                                 scan_layout)
from mmlib.registry import get

TINY = {"clips": 24, "classes": 4, "test_fraction": 0.34, "seconds": 4.0, "frame_size": 16}
RECIPE = "stft_129x79"


@pytest.fixture(scope="module")
def vgg_layout(tmp_path_factory) -> Path:
    """24 clips in the public VGGSound layout, not marked as generated."""
    root = tmp_path_factory.mktemp("vgg") / "VGGSound"
    generate(root, SynthVGGSoundConfig(**TINY))
    (root / STAMP).unlink()
    return root


@pytest.fixture
def vgg_copy(vgg_layout, tmp_path) -> Path:
    dst = tmp_path / "VGGSound"
    shutil.copytree(vgg_layout, dst, ignore=shutil.ignore_patterns("cache"))
    return dst


def _append(path: Path, row: str) -> None:
    path.write_text(path.read_text() + row)


def _tone(seconds: float, hz: float = 1000.0, rate: int = 16000, amplitude: float = 0.3) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)


def test_csv_rows_and_media(vgg_layout):
    rows = read_csv(vgg_layout / "vggsound.csv")
    assert len(rows) == 24 and {r[3] for r in rows} == {"train", "test"}
    assert any(r[2] == "event 003, outdoors" for r in rows)  # a quoted label with a comma
    clips = scan_layout(vgg_layout)
    ytid, start = rows[0][:2]
    assert clips[0].name == f"{ytid}_{start:06d}" and clips[0].video == vgg_layout / "video" / f"{clips[0].name}.mp4"


def test_cache_shapes_classes_and_labels(vgg_layout):
    cache = TensorCache.load(build_cache(vgg_layout, RECIPE, 16))
    t = cache.tensors
    assert t["audio"].shape == (24, 1, 129, 79) and t["audio"].dtype == torch.float16
    assert t["visual"].shape == (24, 3, 3, 16, 16) and t["visual_count"].tolist() == [3] * 24  # 3 of 4 frames
    assert cache.meta["classes"] == sorted(class_names(4)) and int((t["split"] == 2).sum()) == 8
    assert cache.meta["frames_per_clip"] == 3 and cache.meta["skipped_short_clips"] == 0
    by_name = {f"{y}_{s:06d}": label for y, s, label, _, _ in read_csv(vgg_layout / "vggsound.csv")}
    assert [cache.meta["classes"][int(k)] for k in t["label"]] == [by_name[c] for c in cache.meta["clips"]]
    assert torch.isfinite(t["audio"].float()).all() and t["visual"].float().std() > 5


def test_three_frames_kept_at_segment_centres():
    assert kept_frames(10) == [1, 4, 7] and kept_frames(5) == [0, 1, 3] and kept_frames(3) == [0, 1, 2]


def test_mp4_audio_decodes_at_its_rate(tmp_path):
    tone = (_tone(2.0) * 32767).astype(np.int16)
    write_mp4(tmp_path / "a.mp4", np.zeros((4, 16, 16, 3), dtype=np.uint8), 2, tone, 16000)
    x, rate = decode_mp4_audio(tmp_path / "a.mp4")
    assert rate == 16000 and abs(len(x) - len(tone)) <= 2048  # AAC frames of 1024 samples
    spectrum = np.abs(np.fft.rfft(x[2048:2048 + 8192]))
    assert abs(np.argmax(spectrum) * rate / 8192 - 1000) < 10


def _write_stereo_mp4(path: Path, left: np.ndarray, right: np.ndarray, rate: int = 16000) -> None:
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "stereo"
        samples = np.stack([left, right]).astype(np.float32)
        for k in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, k:k + 1024]), format="fltp",
                                               layout="stereo")
            frame.sample_rate, frame.pts = rate, k
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_stereo_mp4_audio_is_the_mean_of_its_channels(tmp_path):
    """librosa.load's mono (what the public loader reads from ffmpeg's stereo wav): the channel mean, not
    ffmpeg's 1/sqrt(2) downmix."""
    tone = _tone(2.0)
    rms = {}
    for name, right in (("same", tone), ("left_only", np.zeros_like(tone))):
        _write_stereo_mp4(tmp_path / f"{name}.mp4", tone, right)
        x, _ = decode_mp4_audio(tmp_path / f"{name}.mp4")
        rms[name] = float(np.sqrt(np.mean(x[2048:-2048] ** 2)))
    assert rms["same"] == pytest.approx(0.3 / np.sqrt(2), rel=0.05)
    assert rms["left_only"] == pytest.approx(0.15 / np.sqrt(2), rel=0.05)


def test_dgl_extracted_layout_is_read_instead_of_the_mp4(vgg_copy):
    """The DGL preprocessing's outputs (audio/<split>-audios/<split>-set/<name>.wav,
    video/<split>-set-img/Image-01-FPS/<name>.mp4/*.jpg) replace a clip's mp4; 3 of its frames are kept."""
    clip = scan_layout(vgg_copy)[0]
    clip.video.unlink()
    wav, frame_dir = extracted_paths(vgg_copy, clip.name, clip.split)
    assert wav == vgg_copy / "audio" / f"{clip.split}-audios" / f"{clip.split}-set" / f"{clip.name}.wav"
    assert frame_dir == vgg_copy / "video" / f"{clip.split}-set-img" / "Image-01-FPS" / f"{clip.name}.mp4"
    wav.parent.mkdir(parents=True)
    scipy.io.wavfile.write(wav, 16000, (_tone(4.0, hz=500) * 32767).astype(np.int16))
    frame_dir.mkdir(parents=True)
    for k, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 0, 0), (0, 255, 0)], start=1):
        Image.new("RGB", (20, 20), colour).save(frame_dir / f"frame_{k:05d}.jpg", quality=95)
    cache = TensorCache.load(build_cache(vgg_copy, RECIPE, 8))
    i = cache.meta["clips"].index(clip.name)
    assert int(cache.tensors["visual_count"][i]) == 3
    assert cache.tensors["visual"][i].float().mean(dim=(2, 3)).argmax(dim=1).tolist() == [0, 1, 0]  # frames 1, 2, 4
    expected = torch.from_numpy(spectrogram(wav, RECIPE)).to(torch.float16)
    assert torch.equal(cache.tensors["audio"][i, 0], expected)


def test_clips_with_fewer_than_three_frames_are_skipped(vgg_copy, capsys):
    clips = scan_layout(vgg_copy)
    for clip, frames in ((clips[0], 4), (clips[1], 6)):  # at 2 fps: 2 s and 3 s, 2 and 3 frames at 1 fps
        write_mp4(clip.video, np.zeros((frames, 16, 16, 3), dtype=np.uint8), 2, np.zeros(8000 * frames, np.int16),
                  16000)
    cache = TensorCache.load(build_cache(vgg_copy, RECIPE, 16))
    assert clips[0].name not in cache.meta["clips"] and len(cache) == 23
    assert int(cache.tensors["visual_count"][cache.meta["clips"].index(clips[1].name)]) == 3
    assert cache.meta["skipped_short_clips"] == 1
    assert f"clip {clips[0].name} has 2 frames at 1 fps" in capsys.readouterr().err


def test_train_and_test_must_hold_the_same_classes(vgg_copy):
    rows = (vgg_copy / "vggsound.csv").read_text().splitlines()
    kept = [r for r in rows if not (r.endswith(",test") and "event 001" in r)]
    (vgg_copy / "vggsound.csv").write_text("\n".join(kept) + "\n")
    with pytest.raises(LayoutError, match=r"same classes.*only in train: \['event 001'\], only in test: \[\]"):
        build_cache(vgg_copy, RECIPE, 16)


@pytest.mark.parametrize("row, message", [
    ("abc,1,label\n", r"expected '<ytid>,<start_seconds>,<label>,<split>'.*got 3 fields"),
    ("abc,1,male speech, man speaking,train\n", r"expected .*\(quote labels holding a comma\), got 5 fields"),
    ("abc,x,label,train\n", "start_seconds must be a whole number"),
    ("abc,1,label,val\n", "split must be train or test, got 'val'"),
    ("abc,1,,train\n", "empty label"),
])
def test_malformed_rows_name_file_and_line(vgg_copy, row, message):
    _append(vgg_copy / "vggsound.csv", row)
    with pytest.raises(LayoutError, match=rf"vggsound\.csv:25: {message}"):
        read_csv(vgg_copy / "vggsound.csv")


def test_duplicate_and_missing_clips(vgg_copy, capsys):
    ytid, start, label = read_csv(vgg_copy / "vggsound.csv")[0][:3]
    _append(vgg_copy / "vggsound.csv", f'{ytid},{start},"{label}",test\n')
    with pytest.raises(LayoutError, match=rf"vggsound\.csv:25: clip {ytid}_{start:06d} is already listed at"):
        scan_layout(vgg_copy)
    rows = (vgg_copy / "vggsound.csv").read_text().splitlines()[:-1] + ["zzzzzzzzzzz,5,event 000,train"]
    (vgg_copy / "vggsound.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(LayoutError, match=r"vggsound\.csv:25: clip zzzzzzzzzzz_000005 has no media: "
                                          r".*video/zzzzzzzzzzz_000005\.mp4 \(nor audio/train-audios/train-set/"
                                          r"zzzzzzzzzzz_000005\.wav with video/train-set-img/Image-01-FPS/"
                                          r"zzzzzzzzzzz_000005\.mp4/\*\.jpg\).*--skip-bad"):
        scan_layout(vgg_copy)
    assert len(scan_layout(vgg_copy, skip_bad=True)) == 24 and "skipped:" in capsys.readouterr().err


def test_undecodable_mp4_names_the_file(vgg_copy):
    clip = scan_layout(vgg_copy)[1]
    clip.video.write_bytes(b"not an mp4")
    with pytest.raises(LayoutError, match=rf"{clip.name}\.mp4: not a decodable video"):
        build_cache(vgg_copy, RECIPE, 16)
    with pytest.raises(MediaError, match="not a decodable video"):
        decode_mp4_audio(clip.video)


def test_missing_csv_and_directory(tmp_path):
    with pytest.raises(LayoutError, match="dataset directory not found"):
        scan_layout(tmp_path / "nope")
    with pytest.raises(LayoutError, match=r"vggsound\.csv: clip list not found"):
        scan_layout(tmp_path)


def test_cli_prepares_the_layout(vgg_copy, capsys):
    assert main(["prepare", "--dataset", "vggsound", "--root", str(vgg_copy), "--recipe", RECIPE,
                 "--image-size", "16"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == vgg_copy / "cache" / f"{RECIPE}_img16.pt" and len(TensorCache.load(path)) == 24
    assert get("datasets", "vggsound")().ensure_prepared(vgg_copy, RECIPE, 16) == path


# ------------------------------------------------------------------------------------------------ synth_vggsound
def test_synth_vggsound_is_deterministic(tmp_path):
    small = {"clips": 8, "classes": 2, "test_fraction": 0.25, "seconds": 3.0, "frame_size": 8}
    paths = [get("datasets", "synth_vggsound")().ensure_prepared(tmp_path / r, RECIPE, 8, generator=small)
             for r in ("a", "b")]
    assert hashlib.sha256(paths[0].read_bytes()).digest() == hashlib.sha256(paths[1].read_bytes()).digest()
    other = get("datasets", "synth_vggsound")().ensure_prepared(tmp_path / "c", RECIPE, 8,
                                                               generator={**small, "seed": 1})
    assert hashlib.sha256(other.read_bytes()).digest() != hashlib.sha256(paths[0].read_bytes()).digest()
    with pytest.raises(FileExistsError, match="generated with other parameters"):
        get("datasets", "synth_vggsound")().ensure_prepared(tmp_path / "a", RECIPE, 8, generator={**small, "seed": 1})


def _low_tone_codes(root: Path, classes: int, step: float) -> tuple[np.ndarray, list[int]]:
    """Each clip's low tone as a position on its pitch grid (integers: a class's code; halves: a distractor)."""
    rows = read_csv(root / "vggsound.csv")
    n_a, _ = code_grid(classes)
    names = class_names(classes)
    positions, codes = [], []
    for ytid, start, label, _, _ in rows:
        x, rate = decode_mp4_audio(root / "video" / f"{ytid}_{start:06d}.mp4")
        spectrum = np.abs(np.fft.rfft(x[:rate * 2]))
        hz = np.fft.rfftfreq(rate * 2, 1 / rate)
        band = (hz > LOW_TONE_HZ - step / 2) & (hz < LOW_TONE_HZ + step * (n_a - 0.5))  # the low tone's grid
        positions.append((hz[band][np.argmax(spectrum[band])] - LOW_TONE_HZ) / step)
        codes.append(names.index(label) % n_a)
    return np.array(positions), codes


def test_synth_vggsound_presence_and_shared_absence(tmp_path):
    """audio_present 1: every clip's chord sits on its class's grid point; shared_absence 1: every clip carries a
    distractor half-way between grid points instead."""
    cfg = {"clips": 12, "classes": 6, "test_fraction": 0.5, "seconds": 3.0, "frame_size": 8, "audio_present": 1.0,
           "audio_snr_db": 30.0}
    generate(tmp_path / "cues", SynthVGGSoundConfig(**cfg))
    positions, codes = _low_tone_codes(tmp_path / "cues", 6, 130.0)
    assert np.allclose(positions, codes, atol=0.25)
    generate(tmp_path / "none", SynthVGGSoundConfig(**cfg, shared_absence=1.0))
    positions, _ = _low_tone_codes(tmp_path / "none", 6, 130.0)
    assert np.allclose(positions % 1, 0.5, atol=0.25)


def test_synth_vggsound_config_is_checked():
    with pytest.raises(ValueError, match=r"classes must be in \[2, 400\]"):
        SynthVGGSoundConfig(classes=401).check()
    with pytest.raises(ValueError, match="fewer train or test clips than classes"):
        SynthVGGSoundConfig(clips=60, classes=40).check()
    with pytest.raises(ValueError, match="seconds must be >= 3"):
        SynthVGGSoundConfig(seconds=2.5).check()
    with pytest.raises(ValueError, match="above the band of 16000 Hz audio"):
        SynthVGGSoundConfig(classes=300, clips=1600, audio_step_hz=400.0).check()
    SynthVGGSoundConfig(classes=309, clips=1600, audio_step_hz=100.0).check()  # the real class count fits
    with pytest.raises(KeyError, match="datasets.synth_vggsound.colour"):
        get("datasets", "synth_vggsound")().ensure_prepared("/nonexistent", RECIPE, 8, generator={"colour": 1})


def test_tiny_training_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLIB_RESULTS", str(tmp_path / "results"))
    torch.set_num_threads(1)
    cfg = from_dict(ExperimentConfig, {
        "data": {"dataset": "synth_vggsound", "root": str(tmp_path / "vgg"), "audio_recipe": RECIPE,
                 "image_size": 16, "frames": 3, "val_fraction": 0.2, "generator": TINY},
        "model": {"encoders": {"audio": {"name": "resnet18", "width": 4}, "visual": {"name": "resnet18", "width": 4}}},
        "optim": {"lr": 0.01},
        "train": {"epochs": 2, "batch_size": 4, "eval_batch_size": 8, "progress": "off", "device": "cpu"},
    })
    record = experiments.run(cfg)
    assert all(np.isfinite(record.steps["loss"])) and len(record.data["classes"]) == 4
    for split in ("val", "test"):
        assert 0 <= record.final[split]["acc"] <= 1
        assert set(record.final[split]["unimodal"]["zero_feature"]) == {"audio", "visual"}
