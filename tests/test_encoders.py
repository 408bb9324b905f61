"""Every registered encoder trains one SGD step at tiny width; head-wise attention layout; offline BERT."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmlib.models.stages import global_mean, is_staged
from mmlib.models.transformer import HeadwiseAttention
from mmlib.registry import get, names

BATCH, CLASSES = 3, 4


def token_ids(batch=BATCH, length=7, vocab=50):
    ids = torch.randint(1, vocab, (batch, length))
    ids[0, 4:] = 0  # padding
    return ids


# tiny configuration and an input per registered encoder
TINY = {
    "resnet18": ({"in_channels": 1, "width": 4}, lambda: torch.randn(BATCH, 1, 32, 32)),
    "resnet50": ({"in_channels": 3, "width": 2}, lambda: torch.randn(BATCH, 2, 3, 32, 32)),
    "vit": ({"in_channels": 1, "width": 8, "depth": 2, "heads": 2, "patch_size": 4, "input_size": (12, 16),
             "max_frames": 2}, lambda: torch.randn(BATCH, 2, 1, 12, 16)),
    "i3d": ({"in_channels": 3, "width": 2, "blocks": (1, 1)}, lambda: torch.randn(BATCH, 4, 3, 16, 16)),
    "convnet4": ({"in_channels": 1, "width": 2}, lambda: torch.randn(BATCH, 1, 28, 28)),
    "text_bert": ({"pretrained": False, "width": 16, "layers": 2, "heads": 2, "vocab_size": 50,
                   "max_length": 16}, token_ids),
    "seq_lstm": ({"in_channels": 5, "width": 8, "layers": 2}, lambda: padded_sequence(5)),
    "seq_transformer": ({"in_channels": 5, "width": 8, "depth": 2, "heads": 2, "max_length": 16},
                        lambda: padded_sequence(5)),
    # segmentation encoders: the four stage maps packed at 1/32 (B, out_dim, H/32, W/32)
    "resnet18_pyramid": ({"in_channels": 1, "width": 4}, lambda: torch.randn(BATCH, 1, 1, 32, 64)),
    "resnet34_pyramid": ({"in_channels": 3, "width": 2}, lambda: torch.randn(BATCH, 3, 32, 32)),
}


def padded_sequence(dim: int, steps: int = 6) -> torch.Tensor:
    x = torch.randn(BATCH, steps, dim)
    x[0, 3:] = 0  # zero-padded steps
    return x


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_every_registered_encoder_has_a_tiny_configuration():
    assert set(TINY) == set(names("encoders"))


@pytest.mark.parametrize("name", sorted(TINY))
def test_encoder_trains_one_sgd_step(name):
    torch.manual_seed(0)
    params, make_input = TINY[name]
    encoder = get("encoders", name)(**params)
    head = nn.Linear(encoder.out_dim, CLASSES)
    x, y = make_input(), torch.arange(BATCH) % CLASSES
    features = encoder(x)
    assert features.shape[:2] == (BATCH, encoder.out_dim) and features.dim() in (2, 4)
    loss = F.cross_entropy(head(features.flatten(2).mean(2) if features.dim() == 4 else features), y)
    assert torch.isfinite(loss)
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    optimizer = torch.optim.SGD([*encoder.parameters(), *head.parameters()], lr=0.1)
    loss.backward()
    optimizer.step()
    changed = [n for n, p in encoder.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) > len(before) // 2, f"only {changed} changed"


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "i3d", "convnet4"])
def test_staged_encoders_declare_their_stages_and_run_them_as_forward_does(name):
    params, make_input = TINY[name]
    encoder = get("encoders", name)(**params).eval()
    assert is_staged(encoder) and set(encoder.fusion_stages) <= set(encoder.stage_names)
    assert list(encoder.stage_channels) == list(encoder.stage_names)
    x = make_input()
    with torch.no_grad():
        fmap, frames = encoder.enter(x)
        for stage in encoder.stage_names:
            fmap = encoder.stage(stage, fmap)
            assert fmap.shape[1] == encoder.stage_channels[stage], stage
        torch.testing.assert_close(global_mean(fmap, frames), encoder(x))
    assert encoder.stage_channels[encoder.stage_names[-1]] == encoder.out_dim
    with pytest.raises(KeyError, match="no stage"):
        encoder.stage("nope", fmap)


def test_i3d_stages_are_its_inception_modules_and_the_greedy_positions_the_last_six():
    encoder = get("encoders", "i3d")(in_channels=3, width=2, blocks=(2, 3, 2))
    assert encoder.stage_names == tuple(f"inception{i}" for i in range(1, 8))
    assert encoder.fusion_stages == encoder.stage_names[1:]
    assert [encoder.stage_channels[s] for s in ("inception2", "inception3", "inception7")] == [8, 16, 32]


def test_headwise_attention_slices_are_contiguous_per_head():
    """Head h is carried by rows [h*d, (h+1)*d) of q/k/v and the same columns of out, as mask_unit says."""
    torch.manual_seed(0)
    dim, heads = 12, 3
    d = dim // heads
    attention = HeadwiseAttention(dim, heads)
    for linear in (attention.q, attention.k, attention.v):
        assert linear.weight.mask_unit == ("head", heads, 0) and linear.bias.mask_unit == ("head", heads, 0)
    assert attention.out.weight.mask_unit == ("head", heads, 1)
    x = torch.randn(2, 5, dim)

    def per_head():  # the input of the out projection: the heads' outputs side by side
        captured = []
        hook = attention.out.register_forward_hook(lambda module, args, out: captured.append(args[0]))
        full = attention(x)
        hook.remove()
        return full, captured[0]

    with torch.no_grad():
        full, heads_out = per_head()
        w = attention.out.weight
        by_head = sum(heads_out[..., h * d:(h + 1) * d] @ w[:, h * d:(h + 1) * d].T for h in range(heads))
        torch.testing.assert_close(by_head + attention.out.bias, full)
        for linear in (attention.q, attention.k, attention.v):  # perturb head 0's slices only
            linear.weight[:d] += torch.randn(d, dim)
            linear.bias[:d] += 1.0
        _, perturbed = per_head()
    torch.testing.assert_close(perturbed[..., d:], heads_out[..., d:])
    assert not torch.allclose(perturbed[..., :d], heads_out[..., :d])


def test_vit_marks_every_attention_weight_and_checks_frames():
    encoder = get("encoders", "vit")(**TINY["vit"][0])
    marked = [n for n, p in encoder.named_parameters() if hasattr(p, "mask_unit")]
    assert len(marked) == 2 * (3 * 2 + 1)  # per block: q/k/v weight and bias, out weight
    for p in encoder.parameters():
        if hasattr(p, "mask_unit"):
            kind, heads, dim = p.mask_unit
            assert kind == "head" and p.shape[dim] % heads == 0
    with pytest.raises(ValueError, match="max_frames=2"):
        encoder(torch.randn(1, 3, 1, 12, 16))
    assert encoder(torch.randn(2, 1, 24, 16)).shape == (2, 8)  # another size: resized position embedding


def test_text_bert_runs_offline_and_ignores_padding():
    torch.manual_seed(0)
    encoder = get("encoders", "text_bert")(**TINY["text_bert"][0]).eval()
    ids = torch.randint(1, 50, (2, 6))
    padded = torch.cat([ids, torch.zeros(2, 4, dtype=torch.int64)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(encoder(padded), encoder(ids))
    queries = [m.query.weight for m in encoder.modules() if hasattr(m, "query")]
    assert len(queries) == 2 and all(q.mask_unit == ("head", 2, 0) for q in queries)
    outs = [m.output.dense.weight for m in encoder.modules() if hasattr(m, "self")]
    assert len(outs) == 2 and all(w.mask_unit == ("head", 2, 1) for w in outs)
    with pytest.raises(ValueError, match="int64"):
        encoder(ids.float())


def test_text_bert_without_local_files_builds_a_local_model():
    with pytest.warns(UserWarning, match="no local files"):
        encoder = get("encoders", "text_bert")(model_name="mmlib-test/no-such-bert", width=8, layers=1,
                                               heads=2, vocab_size=20, max_length=8)
    assert encoder.out_dim == 8
    assert encoder(token_ids(length=5, vocab=20)).shape == (BATCH, 8)


def test_i3d_rejects_wrong_channels():
    encoder = get("encoders", "i3d")(**TINY["i3d"][0])
    with pytest.raises(ValueError, match="expects"):
        encoder(torch.randn(1, 2, 1, 16, 16))


@pytest.mark.parametrize("name", ["seq_lstm", "seq_transformer"])
def test_sequence_encoders_ignore_padding(name):
    """Zero steps are padding: appending more of them, or changing nothing but their count, leaves the features
    unchanged; an all-padding sequence gives zeros; the input width is checked."""
    torch.manual_seed(0)
    params = {"seq_lstm": {"in_channels": 5, "width": 8}, "seq_transformer": {"in_channels": 5, "width": 8,
                                                                              "heads": 2, "max_length": 16}}[name]
    encoder = get("encoders", name)(**params).eval()
    x = padded_sequence(5)
    longer = torch.cat([x, torch.zeros(BATCH, 4, 5)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(encoder(longer), encoder(x))
        assert torch.equal(encoder(torch.zeros(2, 6, 5)), torch.zeros(2, 8))
        single = encoder(x[:1, :3])
        torch.testing.assert_close(single, encoder(x)[:1])  # clip 0's three valid steps alone
    with pytest.raises(ValueError, match="in_channels=5"):
        encoder(torch.randn(2, 6, 7))
    with pytest.raises(ValueError, match="token ids go to the text_bert encoder"):
        encoder(torch.ones(2, 6, dtype=torch.long))


def test_lstm_last_step_pooling_reads_the_last_valid_step():
    torch.manual_seed(0)
    encoder = get("encoders", "seq_lstm")(in_channels=5, width=8, pooling="last").eval()
    x = padded_sequence(5)
    with torch.no_grad():
        out, _ = encoder.lstm(encoder.project(x[:1, :3]))
        torch.testing.assert_close(encoder(x)[:1], out[:, -1])
