"""Text encoder through ``transformers``: a BERT-family model by name (AMSS Sarcasm / Twitter-15 use
BERT-base, amss.md §5), or, offline or with ``pretrained=False``, a BERT built locally from a small
``BertConfig``.

Input: token ids (B, L) int64, pad id 0; the attention mask is ``ids != 0``. Output: the pooled features
(B, hidden). Self-attention projections are tagged with the head-wise mask unit ``p.mask_unit`` (see
``mmlib.models.transformer``), as AMSS masks BERT attention per head.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..registry import register
from .transformer import mark_heads


@register("encoders", "text_bert")
class BertTextEncoder(nn.Module):
    """``model_name`` is loaded from the local Hugging Face cache only (never downloaded here). When its
    files are absent (a warning says so) or ``pretrained=False``, a randomly initialised BERT is built with
    ``width`` hidden channels, ``layers`` layers, ``heads`` heads, ``vocab_size`` tokens and ``max_length``
    positions. ``in_channels`` is accepted for a uniform encoder signature and ignored."""

    def __init__(self, in_channels: int = 1, width: int = 768, model_name: str = "bert-base-uncased",
                 pretrained: bool = True, layers: int = 12, heads: int = 12, vocab_size: int = 30522,
                 max_length: int = 512, mlp_ratio: int = 4):
        super().__init__()
        from transformers import AutoModel, BertConfig, BertModel

        self.model = None
        if pretrained:
            try:
                self.model = AutoModel.from_pretrained(model_name, local_files_only=True)
            except OSError:
                warnings.warn(f"text_bert: no local files for {model_name!r}; building a randomly "
                              f"initialised BERT (width {width}, {layers} layers) instead", stacklevel=2)
        if self.model is None:
            if width % heads:
                raise ValueError(f"text_bert: width {width} is not divisible by heads {heads}")
            config = BertConfig(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=layers,
                                num_attention_heads=heads, intermediate_size=width * mlp_ratio,
                                max_position_embeddings=max_length)
            self.model = BertModel(config)
        self.out_dim = self.model.config.hidden_size
        self.max_length = self.model.config.max_position_embeddings
        self.vocab_size = self.model.config.vocab_size
        heads = self.model.config.num_attention_heads
        for module in self.model.modules():
            if all(hasattr(module, name) for name in ("query", "key", "value")):
                for linear in (module.query, module.key, module.value):
                    mark_heads(linear, heads, 0)
            if hasattr(module, "self") and hasattr(getattr(module, "output", None), "dense"):
                mark_heads(module.output.dense, heads, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2 or ids.dtype != torch.int64:
            raise ValueError(f"text_bert expects token ids (B, L) int64, got {tuple(ids.shape)} {ids.dtype}")
        if ids.shape[1] > self.max_length:
            raise ValueError(f"text_bert: sequence length {ids.shape[1]} exceeds max_length "
                             f"{self.max_length}")
        out = self.model(input_ids=ids, attention_mask=(ids != 0).long())
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]
