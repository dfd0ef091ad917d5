"""Kernel backends. `cpu` holds Numba @njit loop nests; each op family is one module."""
