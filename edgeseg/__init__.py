"""edgeseg: semantic segmentation from training to a fast INT8 model on an edge device."""

__version__ = "0.1.0"
