"""Winograd's minimal filtering F(4x4, 3x3): the transforms, written once for both executors.

For a 3x3 kernel at stride 1, each 4x4 block of outputs comes from a 6x6 tile of input d:

    Y = A^T [ (G g G^T) * (B^T d B) ] A        (* element by element)

so the 36 multiply-adds per input channel and filter replace 144; summed over the input
channels, the middle step becomes 36 independent matrix products (filters x channels times
channels x tiles), which BLAS runs near the machine's peak (see convcli.gemm). Lavin and
Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016), give these matrices
(interpolation points 0, 1, -1, 2, -2 and infinity).

``bt6`` and ``at6`` are the input and output transforms along one axis. They are plain
arithmetic on float32 values, so the same function runs on NumPy arrays (a whole band of
tiles at once) and, compiled by numba, on scalars inside convcli.jit's kernels: both
executors round every operation identically and give the same bits. Numba does not fuse a
multiply and an add unless asked (no fastmath), which keeps that true.

Accuracy: the transforms add and subtract terms up to 8x and 5x the input, so rounding
errors are larger than a direct sum's, and they are shared by a tile: every output of a 4x4
block carries rounding from all 36 inputs of its 6x6 tile. The test suite bounds the error
by 1e-4 of the block's largest |bias| + sum max|w| |x| (each filter's largest weight at
every tap; the other routes: 1e-5 of each output's own |bias| + sum |w x|); typical errors
are about 1e-6 of that, and an output much smaller than its neighbours can see 1e-4 of its
own scale.
The filter transform G g G^T is computed in float64 and rounded once.
"""

from __future__ import annotations

import numpy as np

F2, F4, F5, F8 = np.float32(2.0), np.float32(4.0), np.float32(5.0), np.float32(8.0)

# G (6x3), the filter transform: U = G g G^T, in float64 and rounded to float32 once.
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]])
GG = np.kron(G, G)  # (36, 9): U[6a+b] = sum over 3i+j of GG[6a+b, 3i+j] * g[i, j]


def bt6(d0, d1, d2, d3, d4, d5):
    """B^T d along one axis: six inputs of a tile to six transformed values. The rows of
    B^T are (4 0 -5 0 1 0), (0 -4 -4 1 1 0), (0 4 -4 -1 1 0), (0 -2 -1 2 1 0),
    (0 2 -1 -2 1 0), (0 4 0 -5 0 1)."""
    return ((F4 * d0 - F5 * d2) + d4,
            (d3 + d4) - F4 * (d1 + d2),
            (d4 - d3) + F4 * (d1 - d2),
            (d4 - d2) + F2 * (d3 - d1),
            (d4 - d2) - F2 * (d3 - d1),
            (F4 * d1 - F5 * d3) + d5)


def at6(m0, m1, m2, m3, m4, m5):
    """A^T m along one axis: six products to four outputs. The rows of A^T are
    (1 1 1 1 1 0), (0 1 -1 2 -2 0), (0 1 1 4 4 0), (0 1 -1 8 -8 1)."""
    a, b = m1 + m2, m1 - m2
    c, d = m3 + m4, m3 - m4
    return (m0 + a) + c, b + F2 * d, a + F4 * c, (b + F8 * d) + m5


def filter_transform(w: np.ndarray, groups: int) -> np.ndarray:
    """(F, Cg, 3, 3) kernels -> U (groups, 36, F/groups, Cg) float32, U[g, 6a+b] = G w G^T:
    one float64 matrix product (36 x 9 times 9 x planes) for every plane at once, rounded
    to float32. Run it with BLAS on one thread (convcli.engine does): its threads would
    start for this small product."""
    F, Cg = w.shape[:2]
    u = GG @ w.reshape(F * Cg, 9).T.astype(np.float64)  # (36, F*Cg)
    u = u.astype(np.float32).reshape(36, groups, F // groups, Cg).transpose(1, 0, 2, 3)
    return np.ascontiguousarray(u)


def tiles(ho: int, wo: int) -> tuple[int, int]:
    """Tile rows and columns covering an output of ho x wo."""
    return -(-ho // 4), -(-wo // 4)


def padded(x: np.ndarray, top: int, left: int, th: int, tw: int) -> np.ndarray:
    """x (C, H, W) zero-padded by top rows and left columns, and with zeros past its end,
    to whole tiles: (C, 4*th+2, 4*tw+2)."""
    C, H, W = x.shape
    xw = np.zeros((C, 4 * th + 2, 4 * tw + 2), np.float32)
    h, w = min(H, 4 * th + 2 - top), min(W, 4 * tw + 2 - left)
    xw[:, top:top + h, left:left + w] = x[:, :h, :w]
    return xw


def input_numpy(xw: np.ndarray, r0: int, nr: int, v: np.ndarray) -> None:
    """V (36, C, nr*tw) for tile rows r0..r0+nr of xw (C, 4*th+2, 4*tw+2) from ``padded``:
    first along the rows (B^T over each column), then along the columns, as
    convcli.jit.winograd_input."""
    C, _, ww = xw.shape
    tw = (ww - 2) // 4
    rows = [xw[:, 4 * r0 + a:4 * (r0 + nr - 1) + a + 1:4, :] for a in range(6)]
    t = bt6(*rows)  # six (C, nr, ww)
    vv = v.reshape(6, 6, C, nr, tw)
    for a in range(6):
        s = bt6(*[t[a][:, :, b:b + 4 * (tw - 1) + 1:4] for b in range(6)])
        for b in range(6):
            vv[a, b] = s[b]


def output_numpy(m: np.ndarray, bias: np.ndarray, act: int, r0: int, nr: int, tw: int,
                 out: np.ndarray) -> None:
    """out[f, 4*(r0+r)+i, 4*tx+j] = act(Y + bias[f]) for the band's tiles, from M
    (36, F, nr*tw): A^T along the columns first, then along the rows, as
    convcli.jit.winograd_output. Outputs past the edge of ``out`` are dropped."""
    from .activation import ABS, RELU

    F = m.shape[1]
    ho, wo = out.shape[1:]
    mr = m.reshape(6, 6, F, nr, tw)
    z = [at6(*[mr[a, b] for b in range(6)]) for a in range(6)]  # z[a][j]: (F, nr, tw)
    y0 = 4 * r0
    for j in range(4):
        ncols = min(tw, max(0, -(-(wo - j) // 4)))
        q = at6(*[z[a][j] for a in range(6)])  # q[i]: (F, nr, tw)
        for i in range(4):
            nrows = min(nr, max(0, -(-(ho - y0 - i) // 4)))
            if nrows == 0 or ncols == 0:
                continue
            val = q[i][:, :nrows, :ncols] + bias[:, None, None]
            if act == RELU:
                np.maximum(val, np.float32(0.0), out=val)
            elif act == ABS:
                np.abs(val, out=val)
            out[:, y0 + i:y0 + i + 4 * (nrows - 1) + 1:4, j:j + 4 * (ncols - 1) + 1:4] = val
