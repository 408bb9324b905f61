"""A balancer on a user's own model and DataLoader, driven by a plain PyTorch loop (the README's example)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mmlib.balancers import Batch, Batches, LoopContext, make, named_param_groups
from mmlib.models import MultimodalModel
from mmlib.registry import get, names

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- own-loop example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its own-loop example"
    return match.group(1)


def test_the_readme_example_runs(capsys):
    scope: dict = {}
    exec(compile(readme_example(), "README.md (own-loop example)", "exec"), scope)
    state = scope["state"]
    assert torch.isfinite(state["loss"]) and any(k.startswith("rho_") for k in state)  # AMSS logs its ratios
    assert "loss" in capsys.readouterr().out


class Encoder(nn.Sequential):
    def __init__(self, inputs: int, out_dim: int = 16):
        super().__init__(nn.Linear(inputs, out_dim), nn.ReLU())
        self.out_dim = out_dim


PARAMS = {"unimodal": {"modality": "audio"}, "global_wise": {"coefficients": {"audio": 0.5}},
          "elementwise_uniform": {"ratios": {"audio": 0.5}}, "greedy": {"alpha": 0.0},
          "dnr": {"reinit_epoch": 1}}
FUSION = {"mla": "shared_head"}  # MLA trains one head shared by every modality
GATED = {"vanilla", "greedy", "greedy_random"}  # the Greedy paper's model: CNN branches joined by MMTMs


def users_model(name: str):
    """A concat model of two MLPs on flat inputs, or for the Greedy methods two four-layer CNNs joined by MMTMs
    on 8x8 images; (model, data)."""
    if name not in GATED:
        encoders = {"audio": Encoder(12), "visual": Encoder(20)}
        fusion = get("fusions", FUSION.get(name, "concat"))({m: e.out_dim for m, e in encoders.items()}, 4)
        return MultimodalModel(encoders, fusion), TensorDataset(torch.randn(64, 12), torch.randn(64, 20),
                                                                torch.randint(0, 4, (64,)))
    encoders = {m: get("encoders", "convnet4")(in_channels=c, width=2) for m, c in (("audio", 1), ("visual", 3))}
    model = MultimodalModel(encoders, get("fusions", "mmtm").from_encoders(encoders, 4))
    return model, TensorDataset(torch.randn(64, 1, 8, 8), torch.randn(64, 3, 8, 8), torch.randint(0, 4, (64,)))


@pytest.mark.parametrize("name", names("balancers"))
def test_every_balancer_trains_a_users_model_from_a_plain_loop(name):
    torch.manual_seed(0)
    model, data = users_model(name)
    to_batch = lambda a, v, y: Batch({"audio": a, "visual": v}, y)  # noqa: E731
    train = Batches(DataLoader(data, batch_size=16, shuffle=True), to_batch)
    val = Batches(DataLoader(data, batch_size=32), to_batch)
    context = LoopContext(model, {"train": train, "val": val})
    optimizer = torch.optim.SGD(named_param_groups(model), lr=0.05)
    balancer = make(name, **PARAMS.get(name, {}))
    balancer.attach(model, optimizer, epochs=3, steps_per_epoch=len(train), num_classes=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for epoch in range(3):
        balancer.on_epoch_start(context, epoch)
        for batch in train:
            state = balancer.training_step(model, batch, optimizer)
            assert torch.isfinite(state["loss"]), name
        balancer.on_epoch_end(context, epoch)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, f"{name} left every parameter unchanged"
    expected = ["audio", "rubi", "shared", "visual"] if name == "rubi" else ["audio", "shared", "visual"]
    assert sorted(g["name"] for g in optimizer.param_groups) == expected
