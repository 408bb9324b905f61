"""Throughput benchmark on the current device (``python -m mmlib bench``, ``make bench``).

For each shape of a profile it measures samples/s of

- ``reference``: a loop shaped like the public repositories' — fp32, eager, a torch DataLoader whose
  workers decode every sample in ``__getitem__`` (wav -> spectrogram by the named recipe, video -> 1 fps
  frames, the first ``frames`` of them, random resized crop + flip + normalisation on the CPU),
  ``loss.item()`` every step;
- ``trainer``: mmlib's Trainer end to end (``Trainer.train_epoch`` with the naive balancer, batches drawn
  from the tensor cache resident on the device, bf16 autocast and channels_last on CUDA), timed over one
  epoch after a warm-up epoch;
- ``compute``: the naive training step on one batch already on the device, repeated (the ceiling);

and, on the first shape, the step time of every registered balancer relative to ``naive`` (a balancer that
fails to build or step is reported as an error entry). ``--compile`` adds torch.compile variants of
``trainer`` and ``compute``. The raw media are an embedded synth_av dataset (public CREMA-D layout) written to
``--data-dir`` or a temporary directory; the ``kinetics_sounds`` shapes reuse those media with 3 frames, the
Kinetics-Sounds class count and its spectrogram size. Results: a table on stdout and ``--out`` (bench.json).

``input_shapes`` / ``paper_batch`` give a configuration's inputs (the trainer's batches, from the
configuration alone: no data is generated or read), ``step_memory`` one training and one evaluation step on
such a batch, and ``gpu_memory_estimate`` what a run of the configuration needs on a GPU (``python -m mmlib
show``).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import math
import os
import platform
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .config import ExperimentConfig, ModelConfig, from_dict
from .data.audio import spectrogram
from .data.cache import SPLIT_CODES, TensorCache
from .data.colored_mnist import ColoredMNIST
from .data.crema_d import Clip, scan_layout
from .data.loader import IMAGENET_MEAN, IMAGENET_STD, Batch, random_resized_crop, source_modality
from .data.mosi import MOSI
from .data.nyuv2 import NYUv2, output_size
from .data.synth_av import SynthAV, SynthAVConfig
from .data.synth_ks import SynthKSConfig
from .data.synth_mosi import SynthMOSIConfig
from .data.synth_nvgesture import SynthNVGestureConfig
from .data.synth_nyuv2 import SynthNYUv2Config
from .data.synth_vggsound import SynthVGGSoundConfig
from .data.text_image import TextImageDataset
from .data.video import extract_frames
from .experiments import build
from .models.multimodal import build_model
from .registry import get, names
from .train import Trainer, build_optimizer, pick_device

MODALITY_CHANNELS = {"audio": 1, "visual": 3}


@dataclass(frozen=True)
class Shape:
    dataset: str  # the dataset whose input shapes this stands for: crema_d | kinetics_sounds
    audio_recipe: str  # named spectrogram recipe (mmlib.data.audio)
    frames: int  # frames per clip fed to the visual encoder
    image_size: int  # square frames, pixels
    batch_size: int
    width: int  # ResNet18 base width of both encoders
    num_classes: int

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.audio_recipe}/{self.frames}f/{self.image_size}px/b{self.batch_size}"


@dataclass(frozen=True)
class Profile:
    shapes: tuple[Shape, ...]
    warmup_steps: int  # untimed steps before each timed region (the trainer warms up for a whole epoch)
    timed_steps: int  # timed steps per measurement; also the trainer's epoch length
    clips: int  # clips of generated raw media (the reference loop cycles over them)
    clip_seconds: float  # mean clip length: 3 s gives 2-4 frames at 1 fps


PROFILES = {
    "full": Profile(
        shapes=tuple(Shape("crema_d", recipe, 1, 224, b, 64, 6)
                     for recipe in ("stft_257x188", "spec_257x299") for b in (64, 128))
        + tuple(Shape("kinetics_sounds", "spec_257x1004", 3, 224, b, 64, 31) for b in (64, 128)),
        warmup_steps=5, timed_steps=20, clips=64, clip_seconds=3.0),
    # tiny: width 8, not 4: torch 2.13's CPU inductor aborts in ResNet18's compiled backward below width 8
    "tiny": Profile(
        shapes=(Shape("crema_d", "stft_129x94", 1, 32, 8, 8, 6),
                Shape("kinetics_sounds", "stft_129x94", 3, 32, 8, 8, 31)),
        warmup_steps=1, timed_steps=3, clips=8, clip_seconds=3.0),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=("auto", *PROFILES), default="auto",
                        help="shapes and step counts: full (paper sizes) or tiny (seconds on a CPU); "
                             "auto = full on CUDA, tiny on CPU")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--num-workers", type=int, default=8,
                        help="DataLoader worker processes of the reference loop")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile variants of the trainer and the compute step")
    parser.add_argument("--data-dir", help="directory for the generated raw media (reused when it holds the "
                                           "same generation); default: a temporary directory")
    parser.add_argument("--threads", type=int,
                        help="intra-op CPU threads of the main process (default: torch's choice); 1 keeps "
                             "CPU figures meaningful on a host shared with other jobs")
    parser.add_argument("--out", default="bench.json", help="where to write the results (JSON)")


# ----------------------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn) -> float:
    """Wall seconds of ``fn()``, with the device synchronised on both sides."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def figure(samples: int, steps: int, seconds: float) -> dict:
    return {"samples_per_s": samples / seconds, "step_ms": 1000.0 * seconds / steps, "steps": steps,
            "samples": samples, "seconds": seconds}


# -------------------------------------------------------------------------------------------------- raw media
def raw_media(root: Path, profile: Profile) -> SynthAVConfig:
    """Generate (or reuse) the embedded dataset under ``root`` (1 fps video at the largest image size) and
    build each shape's tensor cache."""
    cfg = SynthAVConfig(clips=profile.clips, seconds=profile.clip_seconds, video_fps=1,
                        video_size=max(s.image_size for s in profile.shapes))
    generator = dataclasses.asdict(cfg)
    for shape in profile.shapes:
        SynthAV().ensure_prepared(root, shape.audio_recipe, shape.image_size, generator=generator)
    return cfg


class RawClipDataset(Dataset):
    """Item ``i`` decodes clip ``i mod len(clips)`` from its files, as the public repositories' loaders do."""

    def __init__(self, clips: list[Clip], shape: Shape, length: int):
        self.clips, self.shape, self.length = clips, shape, length
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        clip = self.clips[i % len(self.clips)]
        audio = torch.from_numpy(spectrogram(clip.wav, self.shape.audio_recipe)).unsqueeze(0)  # (1, F, T)
        video = torch.from_numpy(extract_frames(clip.video, self.shape.image_size))  # (T, 3, S, S) uint8
        keep = torch.arange(self.shape.frames).clamp(max=video.shape[0] - 1)  # the first frames
        x = video[keep].unsqueeze(0).float().div_(255.0)
        x = (random_resized_crop(x, generator=None) - self.mean) / self.std
        return audio, x[0], clip.label


def reference_loop(shape: Shape, clips: list[Clip], device: torch.device, num_workers: int,
                   profile: Profile) -> dict:
    """fp32 eager training on batches of a per-sample decoding DataLoader, timed over whole rounds of worker
    batches after the first round."""
    rounds = max(num_workers, 1)  # workers deliver batches in rounds of num_workers: time whole rounds
    warmup = max(profile.warmup_steps, num_workers)
    steps = rounds * math.ceil(max(profile.timed_steps, 2 * num_workers) / rounds)
    torch.manual_seed(0)
    model = build_model(model_config(shape), MODALITY_CHANNELS, shape.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    dataset = RawClipDataset(clips, shape, (warmup + steps) * shape.batch_size)
    loader = DataLoader(dataset, batch_size=shape.batch_size, shuffle=True, num_workers=num_workers,
                        pin_memory=device.type == "cuda", drop_last=True)
    model.train()
    batches = iter(loader)
    running_loss = 0.0

    def step():
        nonlocal running_loss
        audio, visual, label = next(batches)
        out = model({"audio": audio.to(device), "visual": visual.to(device)})
        loss = F.cross_entropy(out.logits, label.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item()

    for _ in range(warmup):
        step()
    seconds = timed(device, lambda: [step() for _ in range(steps)])
    return figure(steps * shape.batch_size, steps, seconds)


# ---------------------------------------------------------------------------------------------------- trainer
def model_config(shape: Shape) -> ModelConfig:
    encoder = {"name": "resnet18", "width": shape.width}
    return ModelConfig(encoders={"audio": dict(encoder), "visual": dict(encoder)}, fusion={"name": "concat"})


def bench_cache(prepared: TensorCache, shape: Shape, n_train: int, device: torch.device) -> TensorCache:
    """The prepared cache's clips repeated to ``n_train`` train clips plus one batch each of val and test,
    resident on ``device``; classes set to the shape's class count."""
    n_eval = shape.batch_size
    pick = (torch.arange(n_train + 2 * n_eval) % len(prepared)).to(device)
    tensors = {k: v.to(device)[pick] for k, v in prepared.tensors.items() if k != "split"}
    tensors["split"] = torch.cat([torch.full((n_train,), SPLIT_CODES["train"]),
                                  torch.full((n_eval,), SPLIT_CODES["val"]),
                                  torch.full((n_eval,), SPLIT_CODES["test"])]).to(torch.int8).to(device)
    meta = {k: v for k, v in prepared.meta.items() if k != "clips"}
    meta["classes"] = [str(c) for c in range(shape.num_classes)]
    return TensorCache(tensors=tensors, meta=meta)


def experiment_config(shape: Shape, root: Path, device: str, balancer: str,
                      compile_model: bool) -> ExperimentConfig:
    return from_dict(ExperimentConfig, {
        "data": {"dataset": "synth_av", "root": str(root), "audio_recipe": shape.audio_recipe,
                 "frames": shape.frames, "image_size": shape.image_size},
        "model": dataclasses.asdict(model_config(shape)),
        "train": {"batch_size": shape.batch_size, "eval_batch_size": shape.batch_size, "device": device,
                  "compile": compile_model, "progress": "off"},
        "balancer": {"name": balancer},
    })


def make_trainer(cfg: ExperimentConfig, cache: TensorCache) -> Trainer:
    model, balancer = build(cfg, cache, SynthAV())
    return Trainer(cfg, model, balancer, cache)


def trainer_epoch(trainer: Trainer) -> dict:
    """A warm-up epoch, then one timed epoch of ``Trainer.train_epoch`` (loader, steps, epoch bookkeeping)."""
    trainer.train_epoch(0)
    seconds = timed(trainer.device, lambda: trainer.train_epoch(1))
    steps = len(trainer.loaders["train"])
    return figure(steps * trainer.loaders["train"].batch_size, steps, seconds)


def compute_step(trainer: Trainer, profile: Profile) -> dict:
    """The balancer's training step on one device-resident batch, repeated."""
    batch = next(iter(trainer.loaders["train"]))
    trainer.model.train()

    def run(n: int):
        for _ in range(n):
            trainer.balancer.training_step(trainer.model, batch, trainer.optimizer)

    run(profile.warmup_steps)
    seconds = timed(trainer.device, lambda: run(profile.timed_steps))
    return figure(profile.timed_steps * len(batch), profile.timed_steps, seconds)


def balancer_step_ms(name: str, shape: Shape, root: Path, device: str, cache: TensorCache,
                     profile: Profile) -> float:
    """Mean step time (ms) of ``training_step`` over pre-drawn device batches, after the epoch-start hook."""
    trainer = make_trainer(experiment_config(shape, root, device, name, compile_model=False), cache)
    loader = trainer.loaders["train"]
    epochs = itertools.count()
    needed = profile.warmup_steps + profile.timed_steps
    batches = []
    while len(batches) < needed:
        loader.set_epoch(next(epochs))
        batches.extend(itertools.islice(loader, needed - len(batches)))
    trainer.model.train()
    trainer.balancer.on_epoch_start(trainer, 0)
    trainer.model.train()
    for batch in batches[:profile.warmup_steps]:
        trainer.balancer.training_step(trainer.model, batch, trainer.optimizer)

    def run():
        for batch in batches[profile.warmup_steps:]:
            trainer.balancer.training_step(trainer.model, batch, trainer.optimizer)

    return 1000.0 * timed(trainer.device, run) / profile.timed_steps


def balancer_ratios(shape: Shape, root: Path, device: str, cache: TensorCache, profile: Profile) -> dict:
    """``{name: {step_ms, ratio_to_naive} | {error}}`` for every balancer registered now."""
    step_ms, errors = {}, {}
    for name in names("balancers"):
        try:
            step_ms[name] = balancer_step_ms(name, shape, root, device, cache, profile)
        except Exception as err:  # a balancer under development must not stop the benchmark
            if name == "naive":
                raise
            errors[name] = f"{type(err).__name__}: {err}"
        finally:
            release(device)
    result = {name: {"step_ms": ms, "ratio_to_naive": ms / step_ms["naive"]} for name, ms in step_ms.items()}
    result.update({name: {"error": message} for name, message in errors.items()})
    return dict(sorted(result.items()))


def release(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ a configuration's footprint
# what the configuration does not say: the class counts of real datasets that read them from their files,
# MMSA's MOSI sequence lengths, NYUv2's image size, MNIST's frame (data.image_size does not apply to it)
PAPER_CLASSES = {"vggsound": 309, "modelnet40": 40}
MOSI_STEPS = {"audio": 375, "vision": 500, "text": 50}
NYUV2_SIZE = (480, 640)
MNIST_SIZE = 28
# embedded datasets whose ensure_prepared reads the generator parameters inline (others: generator_config)
GENERATORS = {"synth_av": SynthAVConfig, "synth_ks": SynthKSConfig, "synth_vggsound": SynthVGGSoundConfig,
              "synth_nvgesture": SynthNVGestureConfig, "synth_mosi": SynthMOSIConfig,
              "synth_nyuv2": SynthNYUv2Config}


def generator_config(cfg: ExperimentConfig):
    """The embedded dataset's generator parameters (defaults filled in), None for a real dataset."""
    dataset = get("datasets", cfg.data.dataset)()
    if not getattr(dataset, "embedded", False):
        return None
    if hasattr(dataset, "generator_config"):
        return dataset.generator_config(cfg.data.generator)
    if cfg.data.dataset in GENERATORS:
        return from_dict(GENERATORS[cfg.data.dataset], cfg.data.generator, f"datasets.{cfg.data.dataset}")
    return None


def num_classes(cfg: ExperimentConfig) -> int:
    """Classes of the configuration's dataset: the generator's ``classes``, the dataset's labels, or the
    paper's count for a real dataset whose classes are read from its files."""
    generated = generator_config(cfg)
    if generated is not None and hasattr(generated, "classes"):
        return int(generated.classes)
    labels = getattr(get("datasets", cfg.data.dataset), "labels", None)
    return len(labels) if labels else PAPER_CLASSES[cfg.data.dataset]


def input_shapes(cfg: ExperimentConfig, modalities: list[str] | None = None) -> dict[str, tuple[int, ...]]:
    """One item of the trainer's batches at the configuration's sizes, without the batch axis: per modality
    (of ``modalities``, default all) and ``label`` (``()``, or (H, W) for dense labels). Audio (1, F, T) by
    the audio recipe; frames (frames, C, H, W); token ids (text_length,); feature sequences (steps,
    features). Token ids and labels are int64, the rest float."""
    dataset = get("datasets", cfg.data.dataset)()
    generated = generator_config(cfg)
    dense = None
    if isinstance(dataset, NYUv2):  # H = image_size, W the multiple of 32 nearest to the images' aspect
        dense = output_size(*((generated.height, generated.width) if generated else NYUV2_SIZE),
                            cfg.data.image_size)
    shapes = {}
    for m in modalities or cfg.data.modalities:
        source = source_modality(m, dataset.modalities)
        if source not in dataset.modalities:
            raise KeyError(f"data.modalities: {m!r} is not a modality of {cfg.data.dataset} "
                           f"({list(dataset.modalities)})")
        channels = dataset.modalities[source]
        if isinstance(dataset, MOSI):
            steps = getattr(generated, f"{source}_steps") if generated else MOSI_STEPS[source]
            shapes[m] = (steps, getattr(generated, f"{source}_dim") if generated else channels)
        elif isinstance(dataset, TextImageDataset) and source == "text":
            shapes[m] = (cfg.data.text_length,)
        elif source == "audio":
            shapes[m] = (1, *get("audio_recipes", cfg.data.audio_recipe).shape)
        elif dense is not None:
            shapes[m] = (cfg.data.frames, channels, *dense)
        elif isinstance(dataset, ColoredMNIST):
            shapes[m] = (cfg.data.frames, channels, MNIST_SIZE, MNIST_SIZE)
        else:
            shapes[m] = (cfg.data.frames, channels, cfg.data.image_size, cfg.data.image_size)
    shapes["label"] = tuple(dense or ())
    return shapes


def token_encoders(cfg: ExperimentConfig) -> dict[str, int]:
    """Modalities read as token ids -> the vocabulary their encoder embeds."""
    dataset = get("datasets", cfg.data.dataset)()
    if not isinstance(dataset, TextImageDataset):
        return {}
    return {m: int((cfg.model.encoders.get(m) or {}).get("vocab_size", 30522)) for m in cfg.data.modalities
            if source_modality(m, dataset.modalities) == "text"}


def paper_batch(cfg: ExperimentConfig, batch_size: int, modalities: list[str] | None = None,
                seed: int = 0) -> Batch:
    """A batch of ``batch_size`` random inputs at ``input_shapes(cfg)`` (a duplicated modality ``<m>_copy`` is
    served ``<m>``'s very tensor, as the loader does); nothing is generated or read from disk."""
    shapes = input_shapes(cfg, modalities)
    vocab = token_encoders(cfg)
    gen = torch.Generator().manual_seed(seed)
    dataset = get("datasets", cfg.data.dataset)()
    inputs, served = {}, {}
    for m, shape in shapes.items():
        if m == "label":
            continue
        source = source_modality(m, dataset.modalities)
        if source not in served:
            if m in vocab:  # pad id 0, as the tokenizers write it
                served[source] = torch.randint(1, vocab[m], (batch_size, *shape), generator=gen)
            else:
                served[source] = torch.randn((batch_size, *shape), generator=gen)
        inputs[m] = served[source]
    label = torch.randint(0, num_classes(cfg), (batch_size, *shapes["label"]), generator=gen)
    return Batch(inputs=inputs, label=label)


def _rss_bytes(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process from /proc, in bytes (0 where /proc is not there)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak() -> bool:
    """Reset this process's peak resident size (Linux: /proc/self/clear_refs); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _warm_up() -> None:
    """A tiny training step: what the first step in a process allocates once (thread pools, kernel libraries)
    is then not counted as a model's."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 2))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(net(torch.randn(2, 3, 16, 16)), torch.tensor([0, 1])).backward()
    optimizer.step()


def step_memory(cfg: ExperimentConfig, batch_size: int = 2, seed: int = 0) -> dict:
    """One training step (forward, cross-entropy, backward, the configured optimizer's step: the naive
    balancer's ``training_step``) and one evaluation step of the configuration's model, built at its size on
    the CPU in fp32, on ``paper_batch(cfg, batch_size)``. Returns the loss, the logits' shape (and the
    expected one), the bytes of parameters, gradients and optimizer state, and the training step's memory:
    resident size before it, at its peak and at the peak of its forward pass; ``activation_bytes``, the
    forward peak above what was held before, is what the step adds to parameters, gradients and optimizer
    state in a steady state (meaningful in a process that frees memory to the system: ``measure_steps``)."""
    torch.manual_seed(seed)
    dataset = get("datasets", cfg.data.dataset)()
    used = get("balancers", cfg.balancer.name)(**cfg.balancer.params).modalities(list(cfg.data.modalities))
    classes = num_classes(cfg)
    shapes = input_shapes(cfg, used)  # feature sequences: the encoder takes the features' width
    channels = {m: shapes[m][-1] if isinstance(dataset, MOSI) else
                dataset.modalities[source_modality(m, dataset.modalities)] for m in used}
    model = build_model(cfg.model, channels, classes)
    optimizer = build_optimizer(model, cfg.optim)
    balancer = get("balancers", "naive")().attach(model, optimizer, epochs=cfg.train.epochs,
                                                  steps_per_epoch=1, num_classes=classes, device="cpu")
    batch = paper_batch(cfg, batch_size, used, seed)
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())

    def peak_rss() -> int:  # since the reset below; else the process's
        return _rss_bytes("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    forward = []  # the peak when the forward pass ends: every activation kept for the backward pass is live
    hook = model.register_forward_hook(lambda *_: forward.append(peak_rss()))
    gc.collect()
    exact = _reset_peak()
    before = _rss_bytes("VmRSS")
    start = time.perf_counter()
    model.train()
    loss = float(balancer.training_step(model, batch, optimizer)["loss"])
    train_s = time.perf_counter() - start
    peak = peak_rss()
    hook.remove()
    gradients = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if isinstance(t, torch.Tensor))
    model.eval()
    with torch.no_grad():
        logits = model(batch.inputs).logits
    return {"loss": loss, "eval_logits": list(logits.shape),
            "eval_finite": bool(torch.isfinite(logits).all()),
            "expected_logits": [batch_size, classes, *batch.label.shape[1:]], "classes": classes,
            "batch_size": batch_size, "modalities": list(used),
            "inputs": {m: list(x.shape) for m, x in batch.inputs.items()},
            "parameters": sum(p.numel() for p in model.parameters()), "parameter_bytes": parameters,
            "gradient_bytes": gradients, "optimizer_state_bytes": state, "rss_before_bytes": before,
            "peak_rss_bytes": peak, "forward_peak_rss_bytes": forward[0],
            "activation_bytes": max(0, forward[0] - before), "peak_is_step": exact, "train_step_s": train_s}


def _steps_in_fresh_process(cfg_dicts: list[dict], batch_size: int) -> list[dict]:
    from .experiments import config_from

    _warm_up()
    out = []
    for d in cfg_dicts:
        out.append(step_memory(config_from(d), batch_size))
        gc.collect()
    return out


def measure_steps(cfgs: list[ExperimentConfig], batch_size: int = 2) -> list[dict]:
    """``step_memory`` of each configuration, one after another in a fresh process (after a tiny warm-up
    step), whose C allocator returns every freed block above 64 KiB to the system (a fixed mmap threshold):
    each peak is its step's alone, not hidden by memory freed earlier and reused."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # read by the new process's C library at its start
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_steps_in_fresh_process, [c.to_dict() for c in cfgs], batch_size).result()
    finally:
        if saved is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_")
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved


GB = 1024 ** 3


def gpu_memory_estimate(cfg: ExperimentConfig, measured: dict | None = None) -> dict:
    """What one training step of ``cfg`` holds on a GPU at ``train.batch_size``: parameters + gradients +
    optimizer state (the previous step's gradients are still held during a forward pass), plus activations,
    measured as the peak of the forward pass of one fp32 CPU training step at batch 2 (``measure_steps``)
    above what was held before it, scaled linearly to the batch size. An upper bound under bf16 autocast
    (activations about half); the CUDA context and the data cache placed on the GPU come on top."""
    measured = measured or measure_steps([cfg], 2)[0]
    scaled = measured["activation_bytes"] * cfg.train.batch_size / measured["batch_size"]
    held = measured["parameter_bytes"] + measured["gradient_bytes"] + measured["optimizer_state_bytes"]
    gb = lambda n: float(f"{n / GB:.3g}")  # noqa: E731
    return {"estimated_gpu_memory_gb": gb(held + scaled), "batch_size": cfg.train.batch_size,
            "parameters_gb": gb(measured["parameter_bytes"]), "gradients_gb": gb(measured["gradient_bytes"]),
            "optimizer_state_gb": gb(measured["optimizer_state_bytes"]), "activations_gb": gb(scaled),
            "basis": f"parameters + gradients + optimizer state + activations; activations = the forward "
                     f"peak of one fp32 CPU training step at batch {measured['batch_size']} above the memory "
                     f"held before it, scaled linearly to batch {cfg.train.batch_size}; without the CUDA "
                     f"context and the data cache (bf16 autocast needs less)"}


# ------------------------------------------------------------------------------------------------------- main
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_benchmark(profile_name: str, device: torch.device, num_workers: int, compile_model: bool,
                  root: Path) -> dict:
    profile = PROFILES[profile_name]
    generator = raw_media(root, profile)
    clips = scan_layout(root)
    dataset = SynthAV()
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({cpu_name()})",
        "torch": torch.__version__, "profile": profile_name, "num_workers": num_workers,
        "cpu_threads": torch.get_num_threads(), "compile": compile_model,
        "load_average_1min": os.getloadavg()[0],  # other processes on the host skew CPU figures
        "data": {"dataset": "synth_av", "clips": len(clips), "generator": dataclasses.asdict(generator)},
        "shapes": [],
    }
    for i, shape in enumerate(profile.shapes):
        prepared = TensorCache.load(dataset.cache_path(root, shape.audio_recipe, shape.image_size))
        cache = bench_cache(prepared, shape, profile.timed_steps * shape.batch_size, device)
        entry = {"name": shape.name, **dataclasses.asdict(shape),
                 "audio_shape": list(prepared.tensors["audio"].shape[2:]),
                 "reference": reference_loop(shape, clips, device, num_workers, profile)}
        variants = (("", False), ("_compiled", True)) if compile_model else (("", False),)
        for suffix, compiled in variants:
            trainer = make_trainer(experiment_config(shape, root, device.type, "naive", compiled), cache)
            entry[f"trainer{suffix}"] = trainer_epoch(trainer)
            entry[f"compute{suffix}"] = compute_step(trainer, profile)
            entry.setdefault("precision", trainer.precision)
            entry.setdefault("channels_last", trainer.channels_last)
            del trainer
            if compiled:
                torch.compiler.reset()
            release(device)
        rate = {k: v["samples_per_s"] for k, v in entry.items()
                if isinstance(v, dict) and "samples_per_s" in v}
        entry["ratios"] = {"trainer_over_compute": rate["trainer"] / rate["compute"],
                           "trainer_over_reference": rate["trainer"] / rate["reference"]}
        if compile_model:
            entry["ratios"]["trainer_compiled_over_trainer"] = rate["trainer_compiled"] / rate["trainer"]
            entry["ratios"]["compute_compiled_over_compute"] = rate["compute_compiled"] / rate["compute"]
        if i == 0:
            result["balancers"] = {"shape": shape.name,
                                   "ratios": balancer_ratios(shape, root, device.type, cache, profile)}
        result["shapes"].append(entry)
        del cache
        release(device)
    return result


def format_table(result: dict) -> str:
    columns = ["reference", "trainer", "compute"]
    if result["compile"]:
        columns += ["trainer_compiled", "compute_compiled"]
    lines = [f"device {result['device']}  torch {result['torch']}  profile {result['profile']}  "
             f"reference workers {result['num_workers']}  cpu threads {result['cpu_threads']}  "
             f"host load {result['load_average_1min']:.1f}", "",
             "samples/s".ljust(52) + "".join(c.rjust(18) for c in columns)
             + "trainer/compute".rjust(17) + "trainer/reference".rjust(19)]
    for entry in result["shapes"]:
        lines.append(entry["name"].ljust(52)
                     + "".join(f"{entry[c]['samples_per_s']:18.1f}" for c in columns)
                     + f"{entry['ratios']['trainer_over_compute']:17.2f}"
                     + f"{entry['ratios']['trainer_over_reference']:19.2f}")
    lines += ["", f"balancer step time / naive  ({result['balancers']['shape']})"]
    for name, item in result["balancers"]["ratios"].items():
        if "error" in item:
            lines.append(f"  {name:<22} error: {item['error']}")
        else:
            lines.append(f"  {name:<22} {item['ratio_to_naive']:6.2f}   ({item['step_ms']:.1f} ms/step)")
    return "\n".join(lines)


def main(args) -> int:
    device = pick_device(args.device)
    profile = args.profile if args.profile != "auto" else ("full" if device.type == "cuda" else "tiny")
    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mmlib-bench-") as tmp:
        root = Path(args.data_dir) if args.data_dir else Path(tmp) / "synth_av"
        result = run_benchmark(profile, device, args.num_workers, args.compile, root)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(format_table(result))
    print(f"\nwrote {out}")
    return 0
