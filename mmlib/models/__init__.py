"""Encoders and fusions (registered explicitly here) and the MultimodalModel."""
from . import cnn_fusion, convnet, feature_fusion, fusion, resnet, text, transformer, video3d  # noqa: F401
from . import segmentation, sequence  # noqa: F401 (registry: feature-sequence encoders, RGB-D segmentation)
from .fusion import PROTOCOLS, Fusion, ModelOutput
from .multimodal import MultimodalModel, build_model

__all__ = ["PROTOCOLS", "Fusion", "ModelOutput", "MultimodalModel", "build_model"]
