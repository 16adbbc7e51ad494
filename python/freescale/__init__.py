"""FreeScale: fast distributed training of HSTU-style sequential recommenders."""

__version__ = "0.1.0"
