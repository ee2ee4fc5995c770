"""DARTS: Differentiable Architecture Search (Liu, Simonyan and Yang, ICLR 2019) in PyTorch."""

__version__ = "0.1.0"
