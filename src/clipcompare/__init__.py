"""clipcompare: a supervised ImageNet ResNet-50 and CLIP, side by side."""

__version__ = "0.1.0"
