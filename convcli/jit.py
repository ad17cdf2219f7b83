"""All numba code: decorator options, the on-disk cache of compiled kernels, and the kernels.

Imported only when a convolution takes the compiled path (see convcli.engine), so commands
that do not convolve, and small jobs, never pay numba's start-up (about half a second).

What importing this module does to a host program that also uses numba, and nothing more:

- Cache. convcli's kernels are cached in convcli's own user cache folder (convcli.jitcache)
  through a cache locator that serves only these kernels. numba's settings (CACHE_DIR,
  NUMBA_CACHE_DIR) are left alone, so the host's own cached functions go where it says.
  A NUMBA_CACHE_LOCATOR_CLASSES set by the host overrides ours, as it does numba's.
- Threading layer. numba's setting is left alone: numba takes TBB first when it can load it.
  The ``tbb`` wheel (a dependency on x86-64 Linux and Windows) puts its library where the
  dynamic loader does not look inside a virtual environment, so this module loads it by full
  path (see _preload_tbb): the one change, making a library loadable that numba would use
  anyway. TBB starts a parallel loop in ~2 us against ~130 us for numba's fallback
  (workqueue), and it is fork-safe. Where TBB cannot load and numba would pick GNU OpenMP,
  a process must not fork after running a parallel kernel; convcli's own batches fork only
  after compiling (prepare() starts no thread), never after running one.
- Threads. ``call`` sets numba's thread count for the duration of one kernel and puts the
  previous value back; numba keeps that count per calling thread, so other threads of the
  host are not affected even while a call runs.
"""

from __future__ import annotations

import os

import numpy as np

from .activation import ABS, NONE, RELU
from .jitcache import drop_kernel_files, usable_cache_dir

_CACHE_DIR, CACHE_STATUS = usable_cache_dir()
# Modules whose code is compiled into the kernels: a change to any of them must invalidate
# the cached kernels (numba itself only looks at the file a kernel is defined in).
_SOURCES = [__file__, os.path.join(os.path.dirname(__file__), "winograd.py"),
            os.path.join(os.path.dirname(__file__), "activation.py")]


def _preload_tbb() -> None:
    """Make numba's TBB threading layer loadable from pip's ``tbb`` wheel: the wheel puts
    libtbb in <prefix>/lib, which the dynamic loader does not search (a virtual environment
    is not on its path), so numba's load by file name fails; loading it by full path first
    satisfies that lookup, because the loader matches the names of libraries already loaded.
    Without the wheel, numba picks its next layer."""
    import ctypes
    import site
    import sys

    name = {"win32": "tbb12.dll", "darwin": "libtbb.12.dylib"}.get(sys.platform, "libtbb.so.12")
    for prefix in (sys.prefix, site.getuserbase()):
        for folder in ("lib", os.path.join("Library", "bin")):
            path = os.path.join(prefix, folder, name)
            if os.path.exists(path):
                try:
                    ctypes.CDLL(path, mode=getattr(ctypes, "RTLD_GLOBAL", 0))
                    return
                except OSError:
                    pass


if os.environ.get("NUMBA_THREADING_LAYER", "default") in ("default", "safe", "threadsafe",
                                                          "forksafe", "tbb"):
    _preload_tbb()

import numba  # noqa: E402
from numba.core import caching  # noqa: E402
from numba.core.caching import NullCache  # noqa: E402

from . import winograd  # noqa: E402


class _Locator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    """Puts the cache files of convcli's kernels in convcli's cache folder (a sub-folder per
    installed copy of the package, as numba does), and stamps them with the hashes of every
    module compiled into them."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = os.path.join(str(_CACHE_DIR), self.get_suitable_cache_subpath(py_file))

    def get_cache_path(self):
        return self._cache_path

    def get_source_stamp(self):
        import hashlib

        digest = hashlib.sha256()
        for path in _SOURCES:
            with open(path, "rb") as f:
                digest.update(f.read())
        return digest.hexdigest()

    @classmethod
    def from_function(cls, py_func, py_file):
        if _CACHE_DIR is None:
            return None
        return super().from_function(py_func, py_file)


class _CacheImpl(caching.CompileResultCacheImpl):
    _locator_classes = [_Locator]


class _Cache(caching.FunctionCache):
    _impl_class = _CacheImpl


# Decorator options in one place. No eager signatures: the wrappers always pass the same
# types, so exactly one specialisation is compiled (and cached). No fastmath: the kernels
# must round exactly like the NumPy path (no reassociation, no fused multiply-add).
_JIT = dict(nogil=True, error_model="numpy", boundscheck=False)


def _kernel(**options):
    """An entry-point kernel, cached on disk by our own locator (see _Locator)."""
    def wrap(fn):
        kernel = numba.njit(**_JIT, **options)(fn)  # type: ignore[call-overload]
        if _CACHE_DIR is not None:
            kernel._cache = _Cache(kernel.py_func)
        return kernel
    return wrap


_inline = numba.njit(inline="always", **_JIT)  # type: ignore[call-overload]  # helpers only
_bt6 = _inline(winograd.bt6)
_at6 = _inline(winograd.at6)
_ZERO = np.float32(0.0)


@_inline
def _act(v, act):
    """The activation of one value, rounding like NumPy's maximum and abs (see engine)."""
    if act == RELU:
        if v <= _ZERO:  # NaN stays NaN, -0.0 becomes 0.0, as np.maximum(v, 0) does
            v = _ZERO
    elif act == ABS:
        v = abs(v)
    return v


@_inline
def _finish(dst, k, value, base, fresh, act):
    """dst[k] = act((base if fresh else dst[k]) + value): the first pass over a row starts
    from ``base`` instead of a separate fill, the last applies the activation, so a 3x3
    kernel costs two passes along the row instead of four (same arithmetic as fill, add,
    activate)."""
    dst[k] = _act((base if fresh else dst[k]) + value, act)


@_inline
def _apply_taps(dst, src, rows, cols, ws, start, stop, shift, fresh, base, act):
    """dst = act((base if fresh else dst) + sum over taps t in [start, stop) of
    ws[t] * src[rows[t] + shift, cols[t]:][:n]), adding tap groups in order (see _finish).

    Taps go eight (then four, then one) at a time: one pass along dst does eight
    multiply-adds per load and store of dst. Each source is sliced before the loop: indexing
    src[r, c + x] with a signed offset would make numba check for negative indices on every
    access, which blocks vectorisation; a step-less slice is a contiguous view.
    """
    n = dst.shape[0]
    if stop == start:
        if fresh or act != NONE:
            for k in range(n):
                _finish(dst, k, _ZERO, base, fresh, act)
        return
    t = start
    while t + 8 <= stop:
        a0 = src[rows[t] + shift, cols[t]:cols[t] + n]
        a1 = src[rows[t + 1] + shift, cols[t + 1]:cols[t + 1] + n]
        a2 = src[rows[t + 2] + shift, cols[t + 2]:cols[t + 2] + n]
        a3 = src[rows[t + 3] + shift, cols[t + 3]:cols[t + 3] + n]
        a4 = src[rows[t + 4] + shift, cols[t + 4]:cols[t + 4] + n]
        a5 = src[rows[t + 5] + shift, cols[t + 5]:cols[t + 5] + n]
        a6 = src[rows[t + 6] + shift, cols[t + 6]:cols[t + 6] + n]
        a7 = src[rows[t + 7] + shift, cols[t + 7]:cols[t + 7] + n]
        w0, w1, w2, w3 = ws[t], ws[t + 1], ws[t + 2], ws[t + 3]
        w4, w5, w6, w7 = ws[t + 4], ws[t + 5], ws[t + 6], ws[t + 7]
        first, last = fresh and t == start, t + 8 == stop
        a = act if last else NONE
        for k in range(n):
            _finish(dst, k, (w0 * a0[k] + w1 * a1[k] + w2 * a2[k] + w3 * a3[k]
                             + w4 * a4[k] + w5 * a5[k] + w6 * a6[k] + w7 * a7[k]),
                    base, first, a)
        t += 8
    if t + 4 <= stop:
        a0 = src[rows[t] + shift, cols[t]:cols[t] + n]
        a1 = src[rows[t + 1] + shift, cols[t + 1]:cols[t + 1] + n]
        a2 = src[rows[t + 2] + shift, cols[t + 2]:cols[t + 2] + n]
        a3 = src[rows[t + 3] + shift, cols[t + 3]:cols[t + 3] + n]
        w0, w1, w2, w3 = ws[t], ws[t + 1], ws[t + 2], ws[t + 3]
        first, last = fresh and t == start, t + 4 == stop
        a = act if last else NONE
        for k in range(n):
            _finish(dst, k, w0 * a0[k] + w1 * a1[k] + w2 * a2[k] + w3 * a3[k], base, first, a)
        t += 4
    while t < stop:
        a0 = src[rows[t] + shift, cols[t]:cols[t] + n]
        w0 = ws[t]
        first, last = fresh and t == start, t + 1 == stop
        a = act if last else NONE
        for k in range(n):
            _finish(dst, k, w0 * a0[k], base, first, a)
        t += 1


@_inline
def _activate(row, act):
    if act != NONE:
        for k in range(row.shape[0]):
            row[k] = _act(row[k], act)


@_kernel(parallel=True)
def correlate(src, group_rows, sy, ptr, rows, cols, ws, b, act, out):
    """Dense cross-correlation. ``src`` (R, Wq) holds the padded input's rows (all phases
    and channels, see convcli.engine); filter f's taps are [ptr[f], ptr[f+1]): for output row
    y of channel group g, tap t reads src row rows[t] + g*group_rows + y*sy from column
    cols[t] and weighs ws[t]. out is (G, F, Ho, Wo).

    Parallel over (group, output row); each iteration writes only its own rows
    out[g, :, y, :], so writes are disjoint.
    """
    G, F, Ho, Wo = out.shape
    for gy in numba.prange(G * Ho):
        g = gy // Ho
        y = gy - g * Ho
        shift = g * group_rows + y * sy
        for f in range(F):
            _apply_taps(out[g, f, y], src, rows, cols, ws, ptr[f], ptr[f + 1], shift, True, b[f],
                        act)


@_kernel(parallel=True)
def correlate_unpadded(x, top, left, width, sy, dy, kh, groups, chunks, ptr, brows, cols, ws, b,
                       act, out):
    """``correlate`` for a zero border, reading the image x (C, H, W) in place (no padded
    copy; columns at stride 1). Work items are (copy, channel group of torch's ``groups``,
    output row): for each, the kh input rows its taps read from each channel of that group
    are first copied, with their zeros, into a row buffer (buffer row c*kh + i holds row
    y*sy + i*dy - top of the group's channel c, shifted right by ``left`` and ``width``
    wide), then the group's filters run; tap t (whose brows[t] counts channels from the
    copy's first, as in a buffer of every channel) reads buffer row brows[t] - g*Cg*kh from
    column cols[t]. A group's buffer is small (Cg*kh rows: 3 for a depthwise 3x3), so it
    stays in the first-level cache. The same values as ``correlate`` on the padded image.
    Parallel over ``chunks`` runs of work items, each with its own buffer; each item writes
    only its own rows out[copy, f, y, :] for the filters f of its group."""
    C, H, W = x.shape
    G, F, Ho, Wo = out.shape
    cs = C // G  # channels of one copy
    cg = cs // groups  # channels of one group
    fg = F // groups
    total = G * groups * Ho
    for chunk in numba.prange(chunks):
        buf = np.empty((cg * kh, width), np.float32)
        for item in range(chunk * total // chunks, (chunk + 1) * total // chunks):
            gq = item // Ho  # (copy, group)
            y = item - gq * Ho
            g = gq // groups
            q = gq - g * groups
            first = g * cs + q * cg  # the group's first channel in x
            for c in range(cg):
                for i in range(kh):
                    r = y * sy + i * dy - top
                    row = buf[c * kh + i]
                    if 0 <= r < H:
                        row[:left] = 0.0
                        row[left:left + W] = x[first + c, r]
                        row[left + W:] = 0.0
                    else:
                        row[:] = 0.0
            for f in range(q * fg, (q + 1) * fg):
                _apply_taps(out[g, f, y], buf, brows, cols, ws, ptr[f], ptr[f + 1],
                            -q * cg * kh, True, b[f], act)


@_kernel(parallel=True)
def correlate_separable(src, group_rows, sy, term_ptr, vptr, vrows, vcols, vws, hptr, hphase,
                        hcols, hws, b, act, phases, out):
    """Cross-correlation with kernels given as sums of outer products (vertical x horizontal
    terms, see convcli.engine). Filter f's terms are [term_ptr[f], term_ptr[f+1]). For each
    output row, term k first sums its vertical taps into a row per column phase (taps
    [vptr[k*P+p], vptr[k*P+p+1]) for phase p, reading src as in ``correlate``), then adds its
    horizontal taps [hptr[k], hptr[k+1]) read from those phase rows. Parallel over (group,
    output row); each iteration writes only its own rows and its own scratch rows.
    """
    G, F, Ho, Wo = out.shape
    for gy in numba.prange(G * Ho):
        g = gy // Ho
        y = gy - g * Ho
        shift = g * group_rows + y * sy
        tmp = np.empty((phases, src.shape[1]), np.float32)
        for f in range(F):
            row = out[g, f, y]
            row[:] = b[f]
            for k in range(term_ptr[f], term_ptr[f + 1]):
                for p in range(phases):
                    lo, hi = vptr[k * phases + p], vptr[k * phases + p + 1]
                    _apply_taps(tmp[p], src, vrows, vcols, vws, lo, hi, shift, True, _ZERO, NONE)
                _apply_taps(row, tmp, hphase, hcols, hws, hptr[k], hptr[k + 1], 0, False, _ZERO,
                            NONE)
            _activate(row, act)


@_kernel()
def winograd_input(x, top, left, r0, nr, v):
    """Winograd F(4x4, 3x3) input transform of tile rows r0..r0+nr into v (36, C, nr*tw):
    v[6a+b, c, r*tw+tx] = (B^T d B)[a, b] for the 6x6 tile d of the input zero-padded by
    ``top`` rows and ``left`` columns (and with zeros past its end), at rows 4*(r0+r)..,
    columns 4*tx... Each tile row's six input rows are first copied with their zeros into
    a small buffer (no padded copy of the whole input). Then B^T along the rows (down each
    column), then along the columns; the same operations as convcli.winograd.input_numpy.
    The first step stores column 4*tx+k at p[a, k, tx], so the second reads each of a
    tile's six columns from its own contiguous run. Serial: convcli.gemm runs bands in
    parallel."""
    C, H, W = x.shape
    tw = v.shape[2] // nr
    ww = 4 * tw + 2
    lo, hi = min(left, ww), min(max(left + W, 0), ww)  # buffer columns the input covers
    rows = np.zeros((6, ww), np.float32)
    p = np.empty((6, 4, tw + 1), np.float32)
    for c in range(C):
        for r in range(nr):
            y = 4 * (r0 + r) - top
            for a in range(6):
                row = rows[a]
                if 0 <= y + a < H and lo < hi:
                    row[:lo] = 0.0
                    row[lo:hi] = x[c, y + a, lo - left:hi - left]
                    row[hi:] = 0.0
                else:
                    row[:] = 0.0
            x0, x1, x2, x3, x4, x5 = rows[0], rows[1], rows[2], rows[3], rows[4], rows[5]
            for k in range(4):
                p0, p1, p2, p3, p4, p5 = p[0, k], p[1, k], p[2, k], p[3, k], p[4, k], p[5, k]
                for tx in range(tw + (k < 2)):  # columns 4*tw and 4*tw+1 close the last tile
                    q = 4 * tx + k
                    p0[tx], p1[tx], p2[tx], p3[tx], p4[tx], p5[tx] = _bt6(
                        x0[q], x1[q], x2[q], x3[q], x4[q], x5[q])
            n0 = r * tw
            for a in range(6):
                d0, d1, d2, d3 = p[a, 0, :tw], p[a, 1, :tw], p[a, 2, :tw], p[a, 3, :tw]
                d4, d5 = p[a, 0, 1:], p[a, 1, 1:]
                v0, v1, v2 = v[6 * a, c, n0:n0 + tw], v[6 * a + 1, c, n0:n0 + tw], \
                    v[6 * a + 2, c, n0:n0 + tw]
                v3, v4, v5 = v[6 * a + 3, c, n0:n0 + tw], v[6 * a + 4, c, n0:n0 + tw], \
                    v[6 * a + 5, c, n0:n0 + tw]
                for tx in range(tw):
                    v0[tx], v1[tx], v2[tx], v3[tx], v4[tx], v5[tx] = _bt6(
                        d0[tx], d1[tx], d2[tx], d3[tx], d4[tx], d5[tx])


@_kernel()
def winograd_output(m, bias, act, r0, nr, tw, out):
    """Winograd F(4x4, 3x3) output transform: out[f, 4*(r0+r)+i, 4*tx+j] = act(bias[f] +
    (A^T M A)[i, j]) from m (36, F, nr*tw), A^T along the columns first, then along the rows
    (the same operations as convcli.winograd.output_numpy); outputs past the edge of out
    are dropped. The first step stores its results at their output column (z[a, 4*tx+j]), so
    the second runs along whole rows. Serial: convcli.gemm runs bands in parallel."""
    F = m.shape[1]
    ho, wo = out.shape[1], out.shape[2]
    z = np.empty((6, 4 * tw), np.float32)
    y4 = np.empty((4, 4 * tw), np.float32)
    for f in range(F):
        bf = bias[f]
        for r in range(nr):
            n0 = r * tw
            for a in range(6):
                m0, m1, m2 = m[6 * a, f, n0:n0 + tw], m[6 * a + 1, f, n0:n0 + tw], \
                    m[6 * a + 2, f, n0:n0 + tw]
                m3, m4, m5 = m[6 * a + 3, f, n0:n0 + tw], m[6 * a + 4, f, n0:n0 + tw], \
                    m[6 * a + 5, f, n0:n0 + tw]
                za = z[a]
                for tx in range(tw):
                    z0, z1, z2, z3 = _at6(m0[tx], m1[tx], m2[tx], m3[tx], m4[tx], m5[tx])
                    za[4 * tx], za[4 * tx + 1], za[4 * tx + 2], za[4 * tx + 3] = z0, z1, z2, z3
            z0, z1, z2, z3, z4, z5 = z[0], z[1], z[2], z[3], z[4], z[5]
            q0, q1, q2, q3 = y4[0], y4[1], y4[2], y4[3]
            for k in range(wo):
                q0[k], q1[k], q2[k], q3[k] = _at6(z0[k], z1[k], z2[k], z3[k], z4[k], z5[k])
            y = 4 * (r0 + r)
            for i in range(min(4, ho - y)):
                row, qi = out[f, y + i], y4[i]
                for k in range(wo):
                    row[k] = _act(qi[k] + bf, act)


@_kernel()
def im2col(planes, plane, chan, off, first, y0, wq, nrows, wo, patches):
    """Patch rows of one band for convcli.gemm: row k of ``patches`` (K+1, nrows*wo) holds,
    for output rows y0..y0+nrows, planes[plane[k], first + chan[k]] from flat position
    off[k] + y*wq, wo values per output row; the last row is ones (for the bias). The same
    values as the strided copy convcli.gemm makes with NumPy. Serial: bands run in
    parallel."""
    K = plane.shape[0]
    for k in range(K):
        src = planes[plane[k], first + chan[k]]
        dst = patches[k]
        for r in range(nrows):
            s = off[k] + (y0 + r) * wq
            seg, row = src[s:s + wo], dst[r * wo:(r + 1) * wo]
            for t in range(wo):
                row[t] = seg[t]
    patches[K, :] = 1.0


@_kernel()
def activate(a, start, stop, act):
    """a[:, start:stop] = act(a[:, start:stop]) in place (a band of convcli.gemm's output
    rows); the same values as NumPy's maximum(a, 0) and abs(a), a little faster."""
    if act != NONE:
        for i in range(a.shape[0]):
            row = a[i, start:stop]
            for k in range(row.shape[0]):
                row[k] = _act(row[k], act)


@_inline
def _pool_take(cur, v, is_max):
    """One more value into a window: the larger (NaN wins, as np.maximum) or the sum."""
    if is_max:
        if v > cur or v != v:
            return v
        return cur
    return cur + v


@_kernel(parallel=True)
def pool_pass(a, down, k, s, d, before, is_max, rdiv, cdiv, out):
    """One separable pass of max or sum pooling (convcli.ops) over a (C, H, W): down the
    columns when ``down`` (out[c, o, :] from input rows o*s + t*d - before), else along the
    rows (out[c, :, o] from input columns likewise), taps t in order and those outside
    the input left out, starting from -inf (max) or 0 (sum): the same operations in the same
    order as the NumPy passes, so the same bits. When rdiv is not empty, out[c, y, x] is then
    divided by float32(rdiv[y] * cdiv[x]) where that is > 0 (average pooling's divisor,
    rounded as NumPy rounds the same int64 product). Parallel over (channel,
    output row); each iteration writes only its own row out[c, y, :]."""
    C, Ho, Wo = out.shape
    H, W = a.shape[1], a.shape[2]
    start = np.float32(-np.inf) if is_max else _ZERO
    divide = rdiv.shape[0] > 0
    for cy in numba.prange(C * Ho):
        c = cy // Ho
        y = cy - c * Ho
        row = out[c, y]
        row[:] = start
        if down:
            for t in range(k):
                i = y * s + t * d - before
                if 0 <= i < H:
                    src = a[c, i]
                    for x in range(Wo):
                        row[x] = _pool_take(row[x], src[x], is_max)
        else:
            src = a[c, y]
            for t in range(k):
                offset = t * d - before  # output x reads input column x * s + offset
                lo = max(0, -(offset // s))
                hi = min(Wo, (W - 1 - offset) // s + 1) if W - 1 - offset >= 0 else 0
                for x in range(lo, hi):
                    row[x] = _pool_take(row[x], src[x * s + offset], is_max)
        if divide:
            ry = rdiv[y]
            for x in range(Wo):
                dv = np.float32(ry * cdiv[x])
                if dv > 0:
                    row[x] = row[x] / dv


@_kernel()
def to_pixels(a, lo, hi, lo32, hi32, step, top, count, out):
    """out[i] = rint((float64(a[i]) - lo) * step), NaN and values below 0 made 0 and values
    above ``top`` made top: the same float64 steps as convcli.render's NumPy passes, so the
    same pixels. When ``count``, also how many values lie below lo and above hi, compared in
    float32 (lo32, hi32) as NumPy compares a float32 array with a Python float. One pass,
    no temporaries: a map's pixels in about a tenth of the NumPy passes' time."""
    below = 0
    above = 0
    for i in range(a.shape[0]):
        v = a[i]
        if count:
            if v < lo32:
                below += 1
            elif v > hi32:
                above += 1
        p = np.rint((np.float64(v) - lo) * step)
        if not p > 0.0:  # NaN, -inf and what lies below lo: 0, as fmax(p, 0)
            p = 0.0
        elif p > top:  # +inf and what lies above hi: top
            p = top
        out[i] = np.uint16(p)
    return below, above


KERNELS = (correlate, correlate_unpadded, correlate_separable, winograd_input,
           winograd_output, im2col, activate, pool_pass, to_pixels)


def call(kernel, *args, threads: int | None = None) -> None:
    """Run a kernel (one of KERNELS), on at most ``threads`` threads if it is parallel
    (numba's count for this calling thread, put back afterwards)."""
    if not kernel.overloads:  # (cheaper to ask than .signatures)
        _compile(kernel, tuple(numba.typeof(a) for a in args))
    if threads is None:
        return kernel(*args)
    previous = numba.get_num_threads()
    most = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
    numba.set_num_threads(max(1, min(int(threads), most)))
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(previous)


def _compile(kernel, signature) -> None:
    """Compile (or load from the cache) one specialisation. If that fails, compile again
    without the cache: if that works, the kernel's own cache files were at fault (corrupt,
    half-written, from another numba), so only they are deleted and the kernel runs from
    memory this time (the next process saves a fresh copy); if it fails too, the error is
    the code's, and the cache is left alone."""
    try:
        kernel.compile(signature)
        return
    except Exception:
        cache = kernel._cache
        if isinstance(cache, NullCache):
            raise
    kernel._cache = NullCache()
    try:
        kernel.compile(signature)
    except Exception:
        kernel._cache = cache
        raise
    drop_kernel_files(cache.cache_path, cache._impl.filename_base)


def prepare(examples: dict) -> None:
    """Compile (or load from the cache) kernels for these example arguments ({kernel:
    args}) without running them, so no threads start: safe right before forking workers."""
    for kernel, args in examples.items():
        if not kernel.overloads:
            _compile(kernel, tuple(numba.typeof(a) for a in args))
