"""Balancers (training strategies), registered explicitly: import a module here to register its methods.

``make("ogm_ge", alpha=0.8)`` builds one by name; ``mmlib.balancers.base`` states what a balancer needs from a
model and how a plain PyTorch loop drives it (``attach``, ``Batch``, ``Batches``, ``LoopContext``).
"""
from . import naive, ogm_ge  # noqa: F401
from . import agm, amss, domfn, mses, mslr, ogr_gb, pmr  # noqa: F401
from . import greedy, rubi, vanilla  # noqa: F401
from . import dgl, dnr, mla, mmpareto  # noqa: F401
from ..data.loader import Batch
from ..registry import get
from .base import Balancer, Batches, LoopContext, TrainInfo, named_param_groups


def make(name: str, **params) -> Balancer:
    """The registered balancer ``name`` with its hyper-parameters (the paper's defaults where not given)."""
    return get("balancers", name)(**params)


__all__ = ["Balancer", "Batch", "Batches", "LoopContext", "TrainInfo", "make", "named_param_groups"]
