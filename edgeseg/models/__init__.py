"""Models: MobileNetV2 encoder, ASPP, DeepLabV3+ decoder and `build_model`."""

from edgeseg.models.deeplab import HEADS, DeepLab, build_model

__all__ = ["HEADS", "DeepLab", "build_model"]
