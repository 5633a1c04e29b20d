"""kbench: verify and time custom kernels (``ModelNew``) against PyTorch reference problems."""

__version__ = "0.1.0"
