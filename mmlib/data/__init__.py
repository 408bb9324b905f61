"""Datasets (registered explicitly here), media decoding, the tensor cache and the device loader."""
from . import audio, crema_d, synth_av  # noqa: F401  (registers recipes and datasets)
from .cache import TensorCache
from .loader import Batch, DeviceLoader

__all__ = ["Batch", "DeviceLoader", "TensorCache"]
