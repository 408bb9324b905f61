"""OGM-GE: on-the-fly gradient modulation with generalisation enhancement (Peng et al., CVPR 2022).

Per step, after the fused loss's backward:
    s^u   = sum_i softmax(W^u phi^u_i + b/M)[y_i]            (unimodal score, ``head_split`` protocol)
    rho^u = s^u / min_{v != u} s^v                            (discrepancy ratio; for M = 2 the paper's s^a / s^v)
    k^u   = 1 - tanh(alpha * rho^u)  if rho^u > 1  else 1     (paper Eq. 10; the argument is rho, not rho - 1)
    g     <- k^u g + h,  h ~ N(0, std(g)^2)                   (GE; std of the unscaled gradient, per tensor)
applied to the encoder parameters of modality u. For M > 2 (DGL Table 2, right: the core balancing rule kept)
every modality is scored against the weakest one, as BalanceMM generalises it (ratio = s^u / min s): every modality
but the weakest is slowed by its own ratio, the weakest keeps k = 1.

GE's noise has one std per tensor, as large as a typical element of its gradient. SGD averages it out over steps;
Adam normalises every element by its own running magnitude, so the noise dominates each update (the text
encoder's steps become mostly noise, whether or not the noise is scaled by k: LOG.md). The setups trained with Adam
(text-image) therefore run OGM without GE (``ge: false``, params.yaml), labelled as such.

Paper defaults; the public code's deviations are named options: ``scope="conv_kernels"`` (only 4-D conv kernels are
modulated; BN, biases and the head are not) and the modulation window ``start_epoch``/``end_epoch`` (code: 0..50).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import register
from .base import Balancer
from .common import resolve_protocol


@dataclass
class OGMGEConfig:
    alpha: float = 0.8  # modulation strength (the OGM-GE README's CREMA-D value; 0.1 for VGGSound)
    ge: bool = True  # generalisation enhancement: add Gaussian noise after scaling
    scope: str = "encoder"  # encoder (paper: all encoder parameters) | conv_kernels (public code)
    start_epoch: int = 0  # first epoch modulated
    end_epoch: int = -1  # last epoch modulated, inclusive; -1: to the end (public code: 50)
    # unimodal logits for the score: head_split (the modality's block of the head, bias / M); auto / zero_feature
    # for fusions without one (DGL Table 2: zero_feature under MMTM and MLP-Mixer)
    protocol: str = "head_split"


def ogm_coefficients(unimodal_logits: dict[str, torch.Tensor], labels: torch.Tensor,
                     alpha: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Scores s^u, ratios rho^u and coefficients k^u (0-d tensors; no host synchronisation)."""
    scores = {m: torch.softmax(z.float(), dim=1).gather(1, labels[:, None]).sum() for m, z in unimodal_logits.items()}
    ratios, coeffs = {}, {}
    for m, s in scores.items():
        others = torch.stack([v for k, v in scores.items() if k != m])
        rho = s / others.min().clamp_min(1e-12)
        ratios[m] = rho
        coeffs[m] = torch.where(rho > 1, 1 - torch.tanh(alpha * rho), torch.ones_like(rho))
    return ratios, coeffs


@register("balancers", "ogm_ge")
class OGMGE(Balancer):
    Config = OGMGEConfig

    def setup(self, model, optimizer, info):
        super().setup(model, optimizer, info)
        if self.cfg.scope not in ("encoder", "conv_kernels"):
            raise ValueError(f"ogm_ge.scope must be 'encoder' or 'conv_kernels', got {self.cfg.scope!r}")
        if len(model.modalities) < 2:
            raise ValueError("ogm_ge needs at least two modalities")
        self.protocol = resolve_protocol(model.fusion, self.cfg.protocol)
        self.params = {m: [p for p in model.encoder_parameters(m)
                           if self.cfg.scope == "encoder" or p.dim() == 4] for m in model.modalities}
        self._state: dict[str, torch.Tensor] = {}

    def active(self) -> bool:
        return self.epoch >= self.cfg.start_epoch and (self.cfg.end_epoch < 0 or self.epoch <= self.cfg.end_epoch)

    @torch.no_grad()
    def adjust_gradients(self, model, out, batch):
        with self.info.autocast():  # the features come from an autocast forward pass
            uni = model.unimodal_logits(batch.inputs, out, self.protocol)
        ratios, coeffs = ogm_coefficients(uni, batch.label, self.cfg.alpha)
        self._state = {**{f"ratio_{m}": r for m, r in ratios.items()}, **{f"coeff_{m}": k for m, k in coeffs.items()}}
        if not self.active():
            return
        for m, params in self.params.items():
            grads = [p.grad for p in params if p.grad is not None]
            if not grads:
                continue
            if self.cfg.ge:
                stds = [g.std() if g.numel() > 1 else torch.zeros((), device=g.device) for g in grads]
                torch._foreach_mul_(grads, coeffs[m])
                for g, sd in zip(grads, stds):
                    g.add_(torch.randn_like(g) * (sd + 1e-8))
            else:
                torch._foreach_mul_(grads, coeffs[m])

    def state(self):
        return self._state
