"""Balancers (training strategies), registered explicitly: import a module here to register its methods."""
from . import naive, ogm_ge  # noqa: F401
from . import agm, amss, domfn, mses, mslr, ogr_gb, pmr  # noqa: F401
from .base import Balancer, TrainInfo

__all__ = ["Balancer", "TrainInfo"]
