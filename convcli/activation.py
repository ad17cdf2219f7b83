"""Activation codes: the one table shared by the engine's NumPy code and its numba kernels.

Kernels take the code as an int (numba compiles one specialisation for all three), and both
sides compare it against these names, never against bare numbers.
"""

NONE, RELU, ABS = 0, 1, 2
CODES = {"none": NONE, "relu": RELU, "abs": ABS}
