"""segdist: distributed training and evaluation for semantic segmentation."""

__version__ = "0.1.0"
