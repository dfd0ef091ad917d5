"""numbacnn: a small, fast, honest CNN engine whose kernels are explicit Numba loop nests."""

__version__ = "0.1.0"
