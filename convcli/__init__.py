"""convcli: run banks of convolution filters (one CNN conv layer) over images.

The Python API is ``convcli.conv2d`` and ``convcli.conv2d_depthwise`` (see convcli.engine),
``convcli.load_bank`` (see convcli.bank). They are imported on first use so that importing the
package, and the command line's --help, never pay for numba.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["conv2d", "conv2d_depthwise", "load_bank", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("conv2d", "conv2d_depthwise"):
        from . import engine

        return getattr(engine, name)
    if name == "load_bank":
        from .bank import load

        return load
    raise AttributeError(f"module 'convcli' has no attribute {name!r}")
