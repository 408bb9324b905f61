"""mmlib: a replication kit for imbalanced multimodal learning (AMSS/AMSS+, Greedy, DGL).

Importing the package registers every dataset, audio recipe, encoder, fusion and balancer (explicit imports in
each subpackage's ``__init__``); ``mmlib.registry.names(kind)`` lists them.
"""
from . import balancers, data, models  # noqa: F401  (registration)

__version__ = "0.1.0"
