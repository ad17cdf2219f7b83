"""The matrix-multiply routes for deep layers: im2col + GEMM, and Winograd F(4x4, 3x3).

A layer with many input channels and filters is a matrix product: filters (F x C*KH*KW)
times the input's patches (C*KH*KW x pixels). BLAS (NumPy's matmul) runs that near the
machine's peak, which the tap-by-tap direct kernels cannot reach once C*F is large.

- ``im2col``: the patches of one band of output rows are copied into a (K x n) matrix, K =
  C*KH*KW, then multiplied. The input is read in flattened rows: with the padded input (or,
  for a stride, each of its polyphase planes, so every tap reads unit-stride runs; see
  convcli.engine) flattened to (C, rows*width), output position q = y*width + x reads
  q + offset(tap) for every tap, so a band's matrix is one strided copy per plane
  (channel x tap row x tap column x output row x output column), and the product lands
  straight in the output rows. A 1x1 layer multiplies the input where it lies.
- ``winograd``: 3x3 kernels at stride 1 (see convcli.winograd): a band of 6x6 input tiles is
  transformed, multiplied by the transformed filters as 36 matrix products (filters x
  channels times channels x tiles), and transformed back into 4x4 output blocks. The
  transforms run in numba (convcli.jit) or NumPy (convcli.winograd), with the same bits.

Memory: nothing is ever the size of the input times the kernel. Each band's buffers are sized
to stay in cache (BAND_BYTES, WINOGRAD_BAND_BYTES: about 1 MB): the im2col matrix, or the
band's transformed tiles and their products. A band is at least one output row, so a very
deep layer on a wide image can need more: (C*KH*KW + 1) * W' * 4 bytes for im2col,
144 * (C + F) * ceil(W' / 4) for Winograd (1 MB for 64 channels and 64 filters at W'
224, 3.9 MB for 256 and 256).

Threads and determinism: bands are cut from the layer's shape alone (never from the thread
count), and each band is computed the same way whichever thread takes it, so the result is
the same bits run to run and for any number of threads. Bands run on ``threads`` Python
threads (NumPy's matmul and the numba transforms release the GIL) while BLAS is held to
one thread of its own (threadpoolctl, see blas_single_threaded). Its setting is
process-wide: during such a call, other threads of the host that call BLAS get one thread
too; it is restored when the last concurrent convcli call ends. Without threadpoolctl the
bands run one after another in the calling thread and BLAS uses its own default threads.
"""

from __future__ import annotations

import itertools
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import winograd
from .activation import ABS, RELU

# Working set of one band (per thread): the im2col matrix, or Winograd's tiles and products.
# About one or two L2 caches: larger bands gain nothing in BLAS speed and lose in the copies
# and transforms (measured on 512 KB L2, 32 MB L3: VGG-like 3x3 layers took the same time
# with 0.5 to 2 MB Winograd bands, 25-40% longer with 4 to 8 MB).
BAND_BYTES = 768 * 1024
WINOGRAD_BAND_BYTES = 1024 * 1024


# --- running bands in parallel, with BLAS on one thread --------------------------------------

_blas: dict[str, Any] = {"lock": threading.Lock(), "users": 0, "saved": (), "libraries": None}


class _BlasThreads:
    """get() and set(n) of one BLAS library's thread count. OpenBLAS's own functions are
    called directly: threadpoolctl only lets the first Python thread that set a limit set
    another (a convcli call from a second thread would be ignored), and asking through it
    costs ~60 us a call."""

    def __init__(self, lib):
        self.get, self.set = lib.get_num_threads, lib.set_num_threads
        if lib.internal_api == "openblas" and getattr(lib, "threading_layer", "") != "openmp":
            import ctypes

            dll = ctypes.CDLL(lib.filepath)  # the library already loaded: a new handle to it
            for prefix, suffix in itertools.product(("", "scipy_"), ("", "64_")):
                get = getattr(dll, f"{prefix}openblas_get_num_threads{suffix}", None)
                put = getattr(dll, f"{prefix}openblas_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    self.get, self.set = get, put
                    break


def _blas_libraries() -> tuple:
    """The BLAS libraries loaded (NumPy's among them), found by threadpoolctl; none without
    threadpoolctl."""
    if _blas["libraries"] is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas["libraries"] = ()
        else:
            found = ThreadpoolController().select(user_api="blas").lib_controllers
            _blas["libraries"] = tuple(_BlasThreads(lib) for lib in found)
    return _blas["libraries"]


@contextmanager
def blas_single_threaded():
    """Hold BLAS to one thread while convcli's own threads run bands; yields whether it
    could (threadpoolctl installed). Nested and concurrent calls share one limit: the first
    sets it, the last puts the previous setting back."""
    libraries = _blas_libraries()
    if not libraries:
        yield False
        return
    with _blas["lock"]:
        if _blas["users"] == 0:
            _blas["saved"] = tuple((lib, lib.get()) for lib in libraries)
            for lib, threads in _blas["saved"]:
                if threads != 1:
                    lib.set(1)
        _blas["users"] += 1
    try:
        yield True
    finally:
        with _blas["lock"]:
            _blas["users"] -= 1
            if _blas["users"] == 0:
                for lib, threads in _blas["saved"]:
                    if threads != 1:
                        lib.set(threads)


def for_each_band(count: int, threads: int, band: Callable[[int, dict], None],
                  kernels: tuple = ()) -> None:
    """band(i, scratch) for i in range(count), on up to ``threads`` threads; ``scratch`` is
    a dict private to the thread, for buffers reused from one band to the next. While one
    of ``kernels`` (numba's) is not compiled yet, band 0 runs alone first, so that it is
    compiled (or loaded) once, before other threads need it. The first error stops handing
    out bands and is raised here once every thread has finished its band."""
    if count <= 0:
        return
    with blas_single_threaded() as limited:
        workers = max(1, min(int(threads), count)) if limited else 1
        scratch: dict = {}
        first = 0
        if workers == 1 or not all(kernel.overloads for kernel in kernels):
            band(0, scratch)
            first = 1
        if workers == 1:
            for i in range(first, count):
                band(i, scratch)
            return
        todo = itertools.count(first)  # next() on it is atomic under the GIL
        stop = threading.Event()
        errors: list[BaseException] = []

        def work(mine: dict) -> None:
            try:
                for i in todo:
                    if i >= count or stop.is_set():
                        return
                    band(i, mine)
            except BaseException as e:  # noqa: BLE001 (re-raised by the caller)
                errors.append(e)
                stop.set()

        helpers = [threading.Thread(target=work, args=({},), daemon=True)
                   for _ in range(workers - 1)]
        for helper in helpers:
            helper.start()
        try:
            work(scratch)
        finally:
            stop.set()  # no band is left to hand out, or an error stops the others
            for helper in helpers:
                helper.join()
        if errors:
            raise errors[0]


def _buffer(scratch: dict, name: str, size: int) -> np.ndarray:
    """A float32 buffer of at least ``size`` items, kept in the thread's scratch."""
    buf = scratch.get(name)
    if buf is None or buf.size < size:
        buf = scratch[name] = np.empty(size, np.float32)
    return buf[:size]


def _activate(a: np.ndarray, act: int) -> None:
    if act == RELU:
        np.maximum(a, np.float32(0.0), out=a)
    elif act == ABS:
        np.abs(a, out=a)


# --- im2col + GEMM ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Block:
    """Taps that read the same polyphase plane, as a (channel, i, j) grid of offsets."""
    plane: int
    start: int  # flat offset of the first tap in the plane
    ni: int
    step_i: int  # flat offset between taps along i
    nj: int
    step_j: int


@dataclass(frozen=True)
class GemmPlan:
    blocks: tuple[_Block, ...]
    wm: np.ndarray  # (groups, F/groups, K) float32, K in the blocks' (channel, i, j) order
    width: int  # plane width: output position q = y * width + x
    height: int  # plane rows
    phases: tuple[int, int]  # (sy, sx): planes are phase (py, px) = py * sx + px
    rows: tuple[np.ndarray, np.ndarray, np.ndarray]  # per patch row: plane, channel, offset


def gemm_plan(w: np.ndarray, groups: int, stride, dilation, padded_hw) -> GemmPlan:
    """Blocks of taps and the weights in matching column order, for this geometry."""
    F, Cg, KH, KW = w.shape
    (sy, sx), (dy, dx) = stride, dilation
    hq, wq = -(-padded_hw[0] // sy), -(-padded_hw[1] // sx)
    blocks, taps = [], []
    for py in range(sy):
        rows = [i for i in range(KH) if (i * dy) % sy == py]
        for px in range(sx):
            cols = [j for j in range(KW) if (j * dx) % sx == px]
            if not rows or not cols:
                continue
            oi = [(i * dy) // sy for i in rows]  # arithmetic: steps of dy / gcd(dy, sy)
            oj = [(j * dx) // sx for j in cols]
            blk = _Block(py * sx + px, oi[0] * wq + oj[0], len(rows),
                         (oi[1] - oi[0]) * wq if len(rows) > 1 else 0, len(cols),
                         oj[1] - oj[0] if len(cols) > 1 else 0)
            blocks.append(blk)
            # The block's patch rows in (channel, i, j) order, as (plane, c, i, j, offset).
            c, a, b = np.indices((Cg, len(rows), len(cols))).reshape(3, -1)
            taps.append(np.stack([np.full(c.size, blk.plane), c, np.asarray(rows)[a],
                                  np.asarray(cols)[b],
                                  blk.start + a * blk.step_i + b * blk.step_j]))
    plane, chan, i, j, off = np.concatenate(taps, axis=1).astype(np.int64)
    wm = w[:, chan, i, j].reshape(groups, F // groups, -1)  # one gather for all columns
    return GemmPlan(tuple(blocks), np.ascontiguousarray(wm), wq, hq, (sy, sx),
                    (plane, chan, off))


def polyphase(xp: np.ndarray, phases: tuple[int, int]) -> np.ndarray:
    """(P, C, rows*width) flattened planes: the padded input itself at stride 1, else its
    sy*sx phases (phase (py, px) holds rows py, py+sy, ... and columns px, px+sx, ...)."""
    C, Hp, Wp = xp.shape
    sy, sx = phases
    if sy == sx == 1:
        return xp.reshape(1, C, Hp * Wp)
    hq, wq = -(-Hp // sy), -(-Wp // sx)
    planes = np.zeros((sy * sx, C, hq, wq), np.float32)
    for py in range(sy):
        for px in range(sx):
            part = xp[:, py::sy, px::sx]
            planes[py * sx + px, :, :part.shape[1], :part.shape[2]] = part
    return planes.reshape(sy * sx, C, hq * wq)


def run_gemm(xp: np.ndarray, plan: GemmPlan, b: np.ndarray, act: int, out: np.ndarray,
             threads: int, jit) -> None:
    """out (F, H', W') = act(bias + filters x patches), band by band of output rows. A
    band's patches hold its output pixels only, so the product lands in the output as it
    is; the bias rides in the product (a row of ones under the patches), and the activation
    runs on the band while it is still in cache. ``jit``: the convcli.jit module (patches
    copied by numba, about 3x faster) or None (NumPy's strided copies); same values."""
    from numpy.lib.stride_tricks import as_strided

    planes = polyphase(xp, plan.phases)
    groups, fg, K = plan.wm.shape
    F, ho, wo = out.shape
    cg = planes.shape[1] // groups
    wq = plan.width
    # A 1x1 kernel reads the planes where they lie (then wq == wo): no copy at all.
    view = len(plan.blocks) == 1 and plan.blocks[0].ni == plan.blocks[0].nj == 1
    wb = plan.wm if view else np.concatenate([plan.wm, b.reshape(groups, fg, 1)], axis=2)
    band_rows = max(1, BAND_BYTES // ((fg if view else K + 1) * wo * 4))
    count = -(-ho // band_rows)
    item = planes.itemsize
    flat_out = out.reshape(F, ho * wo)

    def band(i: int, scratch: dict) -> None:
        y0 = i * band_rows
        nrows = min(band_rows, ho - y0)
        n = nrows * wo
        for g in range(groups):
            if view:
                blk = plan.blocks[0]
                q0 = blk.start + y0 * wq
                patches = planes[blk.plane, g * cg:(g + 1) * cg, q0:q0 + n]
            elif jit is not None:
                patches = _buffer(scratch, "col", (K + 1) * n).reshape(K + 1, n)
                jit.call(jit.im2col, planes, *plan.rows, g * cg, y0, wq, nrows, wo, patches)
            else:
                patches = _buffer(scratch, "col", (K + 1) * n).reshape(K + 1, n)
                k = 0
                for blk in plan.blocks:
                    src = planes[blk.plane, g * cg:(g + 1) * cg, blk.start + y0 * wq:]
                    taps = as_strided(src, (cg, blk.ni, blk.nj, nrows, wo),
                                      (src.strides[0], blk.step_i * item, blk.step_j * item,
                                       wq * item, item), writeable=False)
                    size = cg * blk.ni * blk.nj
                    patches[k:k + size].reshape(cg, blk.ni, blk.nj, nrows, wo)[...] = taps
                    k += size
                patches[K] = 1.0  # times the bias column of wb
            np.matmul(wb[g], patches, out=flat_out[g * fg:(g + 1) * fg, y0 * wo:y0 * wo + n])
        done = flat_out[:, y0 * wo:y0 * wo + n]
        if view:
            done += b[:, None]
        if jit is not None:
            jit.call(jit.activate, flat_out, y0 * wo, y0 * wo + n, act)
        else:
            _activate(done, act)

    for_each_band(count, threads, band, () if jit is None else (jit.im2col, jit.activate))


# --- Winograd F(4x4, 3x3) ------------------------------------------------------------------

def run_winograd(x: np.ndarray, pads: tuple[int, int], u: np.ndarray, b: np.ndarray,
                 act: int, out: np.ndarray, threads: int, jit) -> None:
    """out = act(bias + 3x3 stride-1 correlation), through F(4x4, 3x3), of x zero-padded by
    pads = (top, left) rows and columns (x is already padded for other borders; zeros past
    its end only feed dropped outputs). ``u`` from convcli.winograd.filter_transform;
    ``jit``: the convcli.jit module (numba transforms, reading x in place) or None (NumPy
    transforms on a padded copy, same bits)."""
    C = x.shape[0]
    groups, _, fg, cg = u.shape
    F, ho, wo = out.shape
    th, tw = winograd.tiles(ho, wo)
    xw = None if jit is not None else winograd.padded(x, *pads, th, tw)
    band_tiles = max(1, WINOGRAD_BAND_BYTES // (36 * (C + F) * tw * 4))
    count = -(-th // band_tiles)

    def band(i: int, scratch: dict) -> None:
        r0 = i * band_tiles
        nr = min(band_tiles, th - r0)
        n = nr * tw
        v = _buffer(scratch, "v", 36 * C * n).reshape(36, C, n)
        m = _buffer(scratch, "m", 36 * F * n).reshape(36, F, n)
        if jit is not None:
            jit.call(jit.winograd_input, x, pads[0], pads[1], r0, nr, v)
        else:
            assert xw is not None  # made for the NumPy executor above
            winograd.input_numpy(xw, r0, nr, v)
        for g in range(groups):
            np.matmul(u[g], v[:, g * cg:(g + 1) * cg], out=m[:, g * fg:(g + 1) * fg])
        if jit is not None:
            jit.call(jit.winograd_output, m, b, act, r0, nr, tw, out)
        else:
            winograd.output_numpy(m, b, act, r0, nr, tw, out)

    for_each_band(count, threads, band,
                  () if jit is None else (jit.winograd_input, jit.winograd_output))
