"""Trainer, run store (caching, atomic writes, resumption), loader, OGM-GE, and a step of every balancer."""
from __future__ import annotations

import pytest
import torch

from mmlib import experiments
from mmlib.balancers.ogm_ge import ogm_coefficients
from mmlib.data.cache import TensorCache, atomic_write_bytes
from mmlib.data.loader import DeviceLoader
from mmlib.registry import names
from mmlib.train import Trainer


def test_run_trains_and_records(make_config, prepared_layout, tmp_path):
    rec = experiments.run(make_config(prepared_layout), root=tmp_path)
    assert rec.path.endswith("record.json") and len(rec.history) == 2
    for split in ("val", "test"):
        m = rec.final[split]
        assert 0 <= m["acc"] <= 1 and 0 <= m["map"] <= 1 and 0 <= m["f1"] <= 1
        assert set(m["unimodal"]["zero_feature"]) == {"audio", "visual"}
    assert rec.select_on == "val" and rec.data["dataset"] == "crema_d" and rec.data["embedded"] is False
    assert rec.data["val"] > 0 and rec.data["test"] == 9
    assert len(rec.steps["loss"]) == 2 * (rec.data["train"] // 8)


def test_run_is_cached_by_its_identity(make_config, prepared_layout, tmp_path, monkeypatch):
    cfg = make_config(prepared_layout, **{"train.epochs": 1})
    first = experiments.run(cfg, root=tmp_path)
    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail("a cached run must not train again"))
    second = experiments.run(cfg, root=tmp_path)
    assert second.final == first.final and second.hash == experiments.run_hash(cfg)
    assert experiments.run_hash(cfg.replace(**{"train.seed": 1})) != experiments.run_hash(cfg)


def test_cpu_training_is_deterministic(make_config, prepared_layout, tmp_path):
    cfg = make_config(prepared_layout, **{"train.epochs": 1, "balancer.name": "ogm_ge"})
    a = experiments.run(cfg, root=tmp_path / "a")
    b = experiments.run(cfg, root=tmp_path / "b")
    assert a.final == b.final and a.steps == b.steps


def test_resume_after_interruption_gives_same_result(make_config, prepared_layout, tmp_path, monkeypatch):
    cfg = make_config(prepared_layout, **{"train.epochs": 3, "balancer.name": "ogm_ge"})
    straight = experiments.run(cfg, root=tmp_path / "straight")

    real_epoch = Trainer.train_epoch

    def interrupted(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        experiments.run(cfg, root=tmp_path / "resumed")
    run_dir = tmp_path / "resumed" / experiments.run_hash(cfg)
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "record.json").exists()
    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    resumed = experiments.run(cfg, root=tmp_path / "resumed")
    assert resumed.final == straight.final and resumed.history == straight.history


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "record.json"
    target.write_text("old")

    def crash(tmp):
        tmp.write_text('{"half": ')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write_bytes(target, crash)
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_select_on_test_is_recorded(make_config, prepared_layout, tmp_path):
    rec = experiments.run(make_config(prepared_layout, **{"train.epochs": 1, "train.select_on": "test"}), root=tmp_path)
    assert rec.select_on == "test" and rec.config["train"]["select_on"] == "test"


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adagrad"])
def test_optimizers(make_config, prepared_layout, tmp_path, optimizer):
    rec = experiments.run(make_config(prepared_layout, **{"train.epochs": 1, "optim.name": optimizer}), root=tmp_path)
    assert torch.isfinite(torch.tensor(rec.steps["loss"])).all()


def test_loader_serves_each_eval_sample_once_and_is_seeded(make_config, prepared_layout):
    cache = TensorCache.load(prepared_layout / "cache" / "stft_129x94_img32.pt")
    common = dict(tensors=cache.tensors, indices=cache.indices("train"), modalities=["audio", "visual"],
                  frames=2, device=torch.device("cpu"), seed=5)
    ev = DeviceLoader(batch_size=5, train=False, augment=False, **common)
    seen = torch.cat([b.index for b in ev])
    assert sorted(seen.tolist()) == sorted(cache.indices("train").tolist())  # no drop_last on evaluation
    tr = DeviceLoader(batch_size=5, train=True, augment=True, **common)
    first = [b.inputs["visual"] for b in tr]
    again = [b.inputs["visual"] for b in tr]
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert first[0].shape == (5, 2, 3, 32, 32) and all(len(b) == 5 for b in tr)
    tr.set_epoch(1)
    assert not torch.equal(next(iter(tr)).inputs["visual"], first[0])


def test_ogm_coefficient_matches_paper_equation():
    """s^u = sum_i softmax(z^u_i)[y_i]; rho^a = s^a/s^v; k = 1 - tanh(alpha rho) for the dominant one, else 1."""
    za = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    zv = torch.tensor([[0.5, 0.0], [0.0, 0.0], [0.0, 0.2]])
    y = torch.tensor([0, 1, 0])
    ratios, coeffs = ogm_coefficients({"audio": za, "visual": zv}, y, alpha=0.5)
    sa = torch.softmax(za, 1)[torch.arange(3), y].sum()
    sv = torch.softmax(zv, 1)[torch.arange(3), y].sum()
    assert torch.allclose(ratios["audio"], sa / sv) and torch.allclose(ratios["visual"], sv / sa)
    assert ratios["audio"] > 1
    assert torch.allclose(coeffs["audio"], 1 - torch.tanh(0.5 * sa / sv))
    assert coeffs["visual"] == 1.0


def test_ogm_scales_only_the_dominant_encoder(make_config, prepared_layout, tmp_path):
    cfg = make_config(prepared_layout, **{"balancer.name": "ogm_ge", "balancer.params": {"ge": False, "alpha": 1.0}})
    dataset, cache = experiments.load_cache(cfg)
    model, balancer = experiments.build(cfg, cache, dataset)
    trainer = Trainer(cfg, model, balancer, cache)
    batch = next(iter(trainer.loaders["train"]))
    out = model(batch.inputs)
    torch.nn.functional.cross_entropy(out.logits, batch.label).backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    balancer.adjust_gradients(model, out, batch)
    k = {m: float(balancer.state()[f"coeff_{m}"]) for m in ("audio", "visual")}
    assert min(k.values()) < 1 and max(k.values()) == 1.0
    for n, p in model.named_parameters():
        m = n.split(".")[1] if n.startswith("encoders.") else None
        expected = before[n] * k[m] if m else before[n]  # the head is never modulated
        assert torch.allclose(p.grad, expected, atol=1e-7), n


@pytest.mark.parametrize("balancer", names("balancers"))
def test_one_step_of_every_balancer(make_config, prepared_layout, balancer):
    """Every registered balancer takes a training step on the default model: finite logged state, and some
    parameter of the model changes; the same seed gives the same state."""
    required = {"mla": {"model.fusion": {"name": "shared_head"}}}  # MLA trains one head shared by every modality

    def step():
        gated = {"model.fusion": {"name": "mmtm"}} if balancer in ("vanilla", "greedy", "greedy_random") else {}
        cfg = make_config(prepared_layout, **{"balancer.name": balancer, **gated, **required.get(balancer, {})})
        dataset, cache = experiments.load_cache(cfg)
        model, bal = experiments.build(cfg, cache, dataset)
        trainer = Trainer(cfg, model, bal, cache)
        before = [p.detach().clone() for p in model.parameters()]
        bal.on_epoch_start(trainer, 0)
        state = bal.training_step(model, next(iter(trainer.loaders["train"])), trainer.optimizer)
        changed = any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
        return {k: float(v) for k, v in state.items()}, changed

    state, changed = step()
    assert changed and "loss" in state
    assert all(torch.isfinite(torch.tensor(v)) for v in state.values()), state
    assert step()[0] == state
