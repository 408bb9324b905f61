"""Datasets (registered explicitly here), media decoding, the tensor cache and the device loader."""
from . import audio, crema_d, nvgesture, synth_av, synth_nvgesture  # noqa: F401  (registers recipes and datasets)
from . import synth_text_image, text_image  # noqa: F401  (registers the text + image datasets)
from . import kinetics_sounds, synth_ks  # noqa: F401  (registers the Kinetics-Sounds datasets)
from . import colored_mnist, synth_colored_mnist  # noqa: F401  (registers the Colored-and-gray MNIST datasets)
from . import modelnet40, synth_modelnet40  # noqa: F401  (registers the ModelNet40 multi-view datasets)
from . import mosi, nyuv2, synth_mosi, synth_nyuv2, synth_vggsound, vggsound  # noqa: F401  (the DGL datasets)
from .cache import TensorCache
from .loader import Batch, DeviceLoader

__all__ = ["Batch", "DeviceLoader", "TensorCache"]
