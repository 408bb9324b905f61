"""The Trainer: epochs, device, precision, evaluation, checkpoint selection, resumption and logging.

A balancer plugs in the method; the Trainer never looks at what it does. Selection is on the validation split
(``select_on: test`` reproduces the public code's protocol and is recorded in the result); the test split is
reported once, from the selected checkpoint. Per-epoch test curves (``track_test``) are for figures only.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import torch

from .balancers.amss import significance
from .balancers.base import Balancer, TrainInfo, named_param_groups
from .config import ExperimentConfig
from .data.cache import TensorCache, load_checked, save_checked
from .data.loader import DeviceLoader, place_cache
from .metrics import IGNORE_INDEX, classification_metrics, confusion_matrix, segmentation_metrics
from .models.multimodal import MultimodalModel
from .probes import check_probes, evaluate_probes
from .utilization import StepMonitor, add_l1_penalty, record_measures


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: is 'cuda' but no CUDA device is available; set it to auto or cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"train.device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def build_optimizer(model: MultimodalModel, cfg) -> torch.optim.Optimizer:
    """One parameter group per modality (encoder + its head part) and one for shared parameters, named, so a
    balancer can set per-modality learning rates."""
    groups = named_param_groups(model)
    if cfg.name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    elif cfg.name == "adam":
        optimizer = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.name == "adagrad":
        optimizer = torch.optim.Adagrad(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"optim.name must be sgd, adam or adagrad, got {cfg.name!r}")
    # greedy.md §6.3: L' = L + lambda ||theta||_1, whatever the balancer (nothing when lambda = 0)
    add_l1_penalty(optimizer, getattr(cfg, "l1", 0.0), getattr(cfg, "l1_step", "subgradient"))
    return optimizer


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stops and nothing is recorded."""


class Trainer:
    def __init__(self, cfg: ExperimentConfig, model: MultimodalModel, balancer: Balancer, cache: TensorCache,
                 run_dir: str | Path | None = None, run_id: str | None = None):
        """``run_id`` names the run a checkpoint belongs to (mmlib.experiments.run_hash); default: the config's
        hash."""
        self.cfg, self.balancer, self.cache = cfg, balancer, cache
        self.run_id = run_id or cfg.config_hash()
        t = cfg.train
        self.device = pick_device(t.device)
        cuda = self.device.type == "cuda"
        precision = ("bf16" if cuda else "fp32") if t.precision == "auto" else t.precision
        if precision not in ("bf16", "fp32"):
            raise ValueError(f"train.precision must be auto, bf16 or fp32, got {t.precision!r}")
        self.precision = precision
        self.channels_last = cuda and t.channels_last
        torch.manual_seed(t.seed)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if t.compile:
            self.model.compile()
        for p in t.protocols:
            if p not in model.fusion.protocols:
                raise ValueError(f"train.protocols: fusion {type(model.fusion).__name__} does not support {p!r}; "
                                 f"it supports {', '.join(model.fusion.protocols)}")
        check_probes(t.probes, model.fusion)
        self.modalities = model.modalities
        # segmentation (meta task): per-pixel losses skip void pixels (labelled IGNORE_INDEX, F.cross_entropy's
        # default ignore_index); evaluation gives mIoU from a confusion matrix, and selection is on mIoU
        self.task = cache.meta.get("task", "classification")
        self.score_key = "miou" if self.task == "segmentation" else "acc"
        tensors = place_cache(cache, self.device)
        common = dict(tensors=tensors, modalities=self.modalities, frames=cfg.data.frames, device=self.device,
                      seed=t.seed, channels_last=self.channels_last, normalize=cache.meta.get("normalize"))
        self.loaders = {
            "train": DeviceLoader(indices=cache.indices("train"), batch_size=t.batch_size, train=True,
                                  augment=cfg.data.augment, **common),
            "val": DeviceLoader(indices=cache.indices("val"), batch_size=t.eval_batch_size, train=False,
                                augment=False, **common),
            "test": DeviceLoader(indices=cache.indices("test"), batch_size=t.eval_batch_size, train=False,
                                 augment=False, **common),
        }
        for split, loader in self.loaders.items():
            if len(loader.indices) == 0:  # a val split carved too small, or split files listing no such clips
                where, fix = (("data.val_fraction", "raise it") if split == "val" else
                              (cfg.data.root, "check its split files"))
                raise ValueError(f"{where}: the {split} split of {cache.meta.get('dataset')} is empty; {fix}")
        if t.select_on not in ("val", "test"):
            raise ValueError(f"train.select_on must be val or test, got {t.select_on!r}")
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, cfg.optim.step_size, cfg.optim.gamma)
        self.info = TrainInfo(epochs=t.epochs, steps_per_epoch=len(self.loaders["train"]),
                              num_classes=cache.num_classes, modalities=self.modalities, device=self.device,
                              autocast=self.autocast, protocol=t.protocols[0] if t.protocols else "zero_feature",
                              extras={"val_loader": self.loaders["val"]})
        self.balancer.setup(self.model, self.optimizer, self.info)
        self.monitor = StepMonitor.for_model(self.model, t.gradient_norms)  # per-step gradient norms (Greedy's mu)
        self.run_dir = Path(run_dir) if run_dir else None
        self.history: list[dict] = []
        self.steps: dict[str, list[float]] = {}
        self.best = {"epoch": -1, "score": -1.0, "state": None}
        self.start_epoch = 0
        self.seconds_before = 0.0  # training time of earlier segments of a resumed run

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ----------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, split: str) -> dict:
        """Metrics of the fused prediction and, for each protocol, of each modality's unimodal logits."""
        if self.task == "segmentation":
            return self.evaluate_segmentation(split)
        self.model.eval()
        logits, labels = [], []
        uni: dict[tuple[str, str], list[torch.Tensor]] = {}
        features: dict[str, list[torch.Tensor]] = {}
        for batch in self.loaders[split]:
            with self.autocast():
                out = self.model(batch.inputs)
                logits.append(out.logits.float())
                for m in self.modalities:
                    features.setdefault(m, []).append(out.features[m].float().flatten(1))
                if len(self.modalities) > 1:
                    for protocol in self.cfg.train.protocols:
                        for m, z in self.model.unimodal_logits(batch.inputs, out, protocol).items():
                            uni.setdefault((protocol, m), []).append(z.float())
            labels.append(batch.label)
        labels_all = torch.cat(labels)
        result = classification_metrics(torch.cat(logits), labels_all)
        result["unimodal"] = {}
        for (protocol, m), zs in uni.items():
            result["unimodal"].setdefault(protocol, {})[m] = classification_metrics(torch.cat(zs), labels_all)
        if uni and self.cfg.train.protocols:  # AMSS's modal significance u^(k) (Eq. 2-3) on this split
            first = self.cfg.train.protocols[0]
            u = significance({m: torch.cat(uni[(first, m)]) for m in self.modalities},
                             {m: torch.cat(f) for m, f in features.items()}, labels_all, self.cache.num_classes)
            result["significance"] = {"protocol": first, **dict(zip(self.modalities, u.tolist()))}
        if len(self.modalities) == 1:  # a unimodal model's own accuracy is its modality's
            result["unimodal"]["model"] = {self.modalities[0]: {k: result[k] for k in ("acc", "map", "f1")}}
        return result

    @torch.no_grad()
    def evaluate_segmentation(self, split: str) -> dict:
        """mIoU, pixel accuracy and per-class IoU of the fused per-pixel prediction and, for each protocol, of each
        modality's unimodal logits, from confusion matrices accumulated on the device (one transfer each)."""
        self.model.eval()
        classes, ignore = self.cache.num_classes, self.cache.meta.get("ignore_index", IGNORE_INDEX)
        fused = torch.zeros(classes, classes, dtype=torch.long, device=self.device)
        uni: dict[tuple[str, str], torch.Tensor] = {}
        for batch in self.loaders[split]:
            with self.autocast():
                out = self.model(batch.inputs)
                fused += confusion_matrix(out.logits, batch.label, classes, ignore)
                if len(self.modalities) > 1:
                    for protocol in self.cfg.train.protocols:
                        for m, z in self.model.unimodal_logits(batch.inputs, out, protocol).items():
                            cm = confusion_matrix(z, batch.label, classes, ignore)
                            uni[(protocol, m)] = uni[(protocol, m)] + cm if (protocol, m) in uni else cm
        result = {"task": "segmentation", **segmentation_metrics(fused), "unimodal": {}}
        for (protocol, m), cm in uni.items():
            result["unimodal"].setdefault(protocol, {})[m] = segmentation_metrics(cm)
        if len(self.modalities) == 1:
            result["unimodal"]["model"] = {self.modalities[0]: {k: result[k] for k in ("miou", "pixel_acc")}}
        return result

    # ------------------------------------------------------------------------------------------------- training
    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        loader = self.loaders["train"]
        loader.set_epoch(epoch)
        self.balancer.on_epoch_start(self, epoch)
        states: list[dict[str, torch.Tensor]] = []
        for batch in self._progress(loader, epoch):
            state = self.balancer.training_step(self.model, batch, self.optimizer)
            states.append({**state, **self.monitor()} if self.monitor else state)
        self.scheduler.step()
        self.balancer.on_epoch_end(self, epoch)
        keys = sorted({k for s in states for k in s})
        means = {}
        for k in keys:  # one host transfer per key and epoch
            values = torch.stack([s[k].detach().float() for s in states if k in s]).cpu()
            if k == "loss" and not torch.isfinite(values).all():
                step = int(torch.nonzero(~torch.isfinite(values))[0])
                raise NonFiniteLossError(f"training loss is {float(values[step])} at epoch {epoch + 1}, step "
                                         f"{step + 1} (balancer {self.cfg.balancer.name}, optim.lr "
                                         f"{self.cfg.optim.lr}); the run is not recorded")
            self.steps.setdefault(k, []).extend(values.tolist())
            means[k] = float(values.mean())
        return means

    def _progress(self, loader, epoch):
        mode = self.cfg.train.progress
        if mode == "on" or (mode == "auto" and sys.stderr.isatty()):
            from tqdm import tqdm
            return tqdm(loader, desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}", leave=False)
        return loader

    def fit(self) -> dict:
        self._resume()
        t0 = time.perf_counter()
        select = self.cfg.train.select_on
        for epoch in range(self.start_epoch, self.cfg.train.epochs):
            train_state = self.train_epoch(epoch)
            entry = {"epoch": epoch, "train": train_state, "lr": self.scheduler.get_last_lr()[0]}
            if self.cfg.train.probes:  # e.g. DGL Fig. 3(a)'s suppression factor, on the training set
                entry["probes"] = evaluate_probes(self.model, self.loaders["train"], self.cfg.train.probes,
                                                  self.autocast)
            entry["val"] = self.evaluate("val")
            if self.cfg.train.track_test or select == "test":
                entry["test"] = self.evaluate("test")
            self.history.append(entry)
            score = entry[select][self.score_key]
            if score > self.best["score"]:
                state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
                self.best = {"epoch": epoch, "score": score, "state": state}
            self._checkpoint(epoch, self.seconds_before + time.perf_counter() - t0)
        train_seconds = self.seconds_before + time.perf_counter() - t0
        self.model.load_state_dict(self.best["state"])
        final = {"val": self.evaluate("val"), "test": self.evaluate("test")}
        record_measures(self, final)  # R(f); Greedy's d_util and d_speed on MMTM-style models
        return {"final": final, "best_epoch": self.best["epoch"], "select_on": select, "history": self.history,
                "steps": self.steps, "train_seconds": train_seconds, "device": self._device_name(),
                "precision": self.precision}

    def _device_name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"

    # ----------------------------------------------------------------------------------------------- resumption
    def _checkpoint(self, epoch: int, train_seconds: float) -> None:
        if self.run_dir is None:
            return
        blob = {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "balancer": self.balancer.state_dict(),
                "rng": torch.get_rng_state(), "history": self.history, "steps": self.steps,
                "best": self.best, "run_id": self.run_id, "train_seconds": train_seconds}
        if self.device.type == "cuda":
            blob["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        save_checked(blob, self.run_dir / "checkpoint.pt")  # with a checksum of its content, checked on resume

    def _resume(self) -> None:
        path = self.run_dir / "checkpoint.pt" if self.run_dir else None
        if path is None or not path.is_file():
            return
        restart = "remove it, or restart the run from epoch 1 with `python -m mmlib train ... --force`"
        blob = load_checked(path, restart, map_location=self.device)
        if blob.get("run_id") != self.run_id:
            raise ValueError(f"{path}: belongs to another run ({blob.get('run_id')}, not {self.run_id}); {restart}")
        self.model.load_state_dict(blob["model"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        self.balancer.load_state_dict(blob["balancer"])
        torch.set_rng_state(blob["rng"].cpu())
        if "cuda_rng" in blob and self.device.type == "cuda":
            torch.cuda.set_rng_state(blob["cuda_rng"].cpu(), self.device)
        self.history, self.steps = blob["history"], blob["steps"]
        self.best = blob["best"]
        self.best["state"] = {k: v.cpu() for k, v in self.best["state"].items()}
        self.start_epoch = blob["epoch"] + 1
        self.seconds_before = float(blob.get("train_seconds", 0.0))
