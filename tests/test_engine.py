"""The engine against the float64 oracle, analytic images and algebraic properties; its
configuration as an explicit value; its JIT cache and thread handling."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from convcli import conv2d, conv2d_depthwise, engine, gemm, ops
from convcli.engine import EngineConfig
from convcli.errors import InputError, UsageError
from oracle import reference_conv2d

BORDERS = ["zero", "reflect", "replicate", "wrap"]
ACTIVATIONS = ["relu", "none", "abs"]
# Rounding error allowed, as a fraction of |bias| + sum |w x| (the oracle's ``magnitude``),
# plus 1e-9 of the largest such sum in the map (the FFT's error is spread over the map);
# for Winograd, of that sum over its tile (see assert_matches_oracle).
TOLERANCE = {"direct": 1e-5, "gemm": 1e-5, "fft": 1e-5, "winograd": 1e-4}


def settings_of(layer):
    return {k: layer[k] for k in ("stride", "dilation", "padding", "border", "activation",
                                  "groups")}


@st.composite
def layers(draw, winograd=False):
    """A random conv layer: image, weights, bias and settings (torch's groups included).
    ``winograd``: 3x3 kernels at stride 1 and dilation 1, enough pixels for several tiles."""
    groups = draw(st.integers(1, 3))
    c = groups * draw(st.integers(1, 2 if winograd else 3 - (groups > 1)))
    f = groups * draw(st.integers(1, 3))
    if winograd:
        h, w = draw(st.integers(1, 14)), draw(st.integers(1, 14))
        kh = kw = 3
        stride = dilation = (1, 1)
    else:
        h, w = draw(st.integers(1, 11)), draw(st.integers(1, 11))
        kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.one_of(
        st.sampled_from(["same", "valid"]),
        st.tuples(*[st.integers(0, 3)] * 4),
    ))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    image = rng.random((c, h, w), dtype=np.float32)
    weights = rng.standard_normal((f, c // groups, kh, kw)).astype(np.float32)
    weights[rng.random(weights.shape) < 0.2] = 0.0  # exercise the zero-tap skip
    bias = rng.standard_normal(f).astype(np.float32)
    return dict(image=image, weights=weights, bias=bias, stride=stride, dilation=dilation,
                padding=padding, border=draw(st.sampled_from(BORDERS)),
                activation=draw(st.sampled_from(ACTIVATIONS)), groups=groups)


def _fits(layer) -> bool:
    _, h, w = layer["image"].shape
    _, _, kh, kw = layer["weights"].shape
    if layer["padding"] == "same":
        return True
    p = (0, 0, 0, 0) if layer["padding"] == "valid" else layer["padding"]
    return (h + p[0] + p[1] >= (kh - 1) * layer["dilation"][0] + 1
            and w + p[2] + p[3] >= (kw - 1) * layer["dilation"][1] + 1)


def assert_matches_oracle(got, layer, tolerance, tiles=False):
    """Within ``tolerance`` of the oracle's scale (see TOLERANCE). ``tiles`` (Winograd):
    a 4x4 block of outputs comes from one 6x6 input tile whose transform mixes every input
    of the tile, each weighed by the transformed kernel, so the scale of each output is
    the largest over its block of |bias| + sum max|w| |x| (each filter's largest weight for
    every tap: a zero or small weight still carries its input's rounding error)."""
    want = reference_conv2d(**layer)
    if tiles:
        w = layer["weights"]
        top = np.broadcast_to(np.abs(w).max(axis=(1, 2, 3), keepdims=True), w.shape)
        scale = reference_conv2d(**dict(layer, weights=np.ascontiguousarray(top)),
                                 magnitude=True)
        f, h, wd = scale.shape
        blocks = np.zeros((f, -(-h // 4) * 4, -(-wd // 4) * 4))
        blocks[:, :h, :wd] = scale
        blocks = blocks.reshape(f, -1, 4, blocks.shape[2] // 4, 4).max(axis=(2, 4))
        scale = np.repeat(np.repeat(blocks, 4, axis=1), 4, axis=2)[:, :h, :wd]
    else:
        scale = reference_conv2d(**layer, magnitude=True)
    assert got.dtype == np.float32
    assert got.shape == want.shape
    err = np.abs(got - want)
    bound = tolerance * scale + 1e-9 * scale.max()
    assert (err <= bound).all(), f"worst error {np.max(err / (scale + 1e-30)):.2e} of the scale"


def same_bits(a, b) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("algorithm", ["direct", "gemm", "fft"])
@given(layer=layers())
def test_matches_oracle(layer, algorithm):
    assume(_fits(layer))
    got = conv2d(**layer, config=EngineConfig(algorithm=algorithm))
    assert_matches_oracle(got, layer, TOLERANCE[algorithm])


@settings(max_examples=40)
@given(layer=layers(winograd=True))
def test_winograd_matches_oracle(layer):
    assume(_fits(layer))
    got = conv2d(**layer, config=EngineConfig(algorithm="winograd"))
    assert_matches_oracle(got, layer, TOLERANCE["winograd"], tiles=True)


@pytest.mark.parametrize("algorithm", ["direct", "gemm", "winograd", "fft"])
@settings(max_examples=30)
@given(layer=layers(), wlayer=layers(winograd=True))
def test_executors_give_identical_bits(layer, wlayer, algorithm):
    """numba and NumPy run every algorithm with the same float32 operations."""
    if algorithm == "winograd":
        layer = wlayer
    assume(_fits(layer))
    jit = conv2d(**layer, config=EngineConfig(method="jit", algorithm=algorithm))
    lean = conv2d(**layer, config=EngineConfig(method="numpy", algorithm=algorithm))
    assert same_bits(jit, lean)


@given(layers())
def test_depthwise_executors_give_identical_bits(layer):
    assume(_fits(layer))
    kwargs = settings_of(layer)
    del kwargs["groups"]
    w2d = layer["weights"][:, 0]
    assert same_bits(conv2d_depthwise(layer["image"], w2d, **kwargs, method="jit"),
                     conv2d_depthwise(layer["image"], w2d, **kwargs, method="numpy"))


@pytest.mark.parametrize("algorithm", ["direct", "gemm", "winograd"])
@settings(max_examples=15)
@given(layer=layers(winograd=True))
def test_results_do_not_depend_on_threads_or_band_size(layer, algorithm):
    """Bands as small as they go (one row, one tile row) run on 1 to 3 threads: the same
    bits every time, and still the oracle's values."""
    assume(_fits(layer))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gemm, "BAND_BYTES", 1)
        patch.setattr(gemm, "WINOGRAD_BAND_BYTES", 1)
        runs = [conv2d(**layer, config=EngineConfig(algorithm=algorithm, threads=n))
                for n in (1, 2, 3)]
    assert same_bits(runs[0], runs[1]) and same_bits(runs[0], runs[2])
    assert_matches_oracle(runs[0], layer, TOLERANCE[algorithm], tiles=algorithm == "winograd")


@st.composite
def separable_layers(draw):
    """Layers whose kernels are sums of one or two outer products: the separable path."""
    layer = draw(layers())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    f, c = layer["weights"].shape[:2]
    rank = draw(st.integers(1, 2))
    lo = 5 if rank == 1 else 7  # sizes where rank * (kh + kw) is well under kh * kw
    kh, kw = draw(st.integers(lo, 11)), draw(st.integers(lo, 11))
    w = np.zeros((f, c, kh, kw), np.float32)
    for _ in range(rank):
        w += np.einsum("fci,fcj->fcij", rng.standard_normal((f, c, kh)),
                       rng.standard_normal((f, c, kw))).astype(np.float32)
    layer["weights"] = w
    layer["image"] = rng.random((c * layer["groups"], draw(st.integers(12, 40)),
                                 draw(st.integers(12, 40))), dtype=np.float32)
    return layer


@settings(max_examples=30)
@given(layer=separable_layers())
def test_separable_path_matches_oracle_with_identical_executors(layer):
    assume(_fits(layer))
    assert engine._separable_terms(layer["weights"]) is not None  # the path under test
    got = conv2d(**layer, method="jit")
    assert_matches_oracle(got, layer, TOLERANCE["direct"])
    assert same_bits(got, conv2d(**layer, method="numpy"))


def _naive_dense_plan(w, source, sx, dy, dx, groups):
    """The tap lists one filter and one tap at a time (what _dense_plan vectorises)."""
    F, Cg = w.shape[:2]
    ptr, rows, cols, ws = [0], [], [], []
    for f in range(F):
        for c, i, j in zip(*np.nonzero(w[f])):
            rows.append(source.row((j * dx) % sx, c + (f // (F // groups)) * Cg, i * dy))
            cols.append((j * dx) // sx)
            ws.append(w[f, c, i, j])
        ptr.append(len(rows))
    return ptr, rows, cols, ws


@given(layers())
def test_vectorised_tap_plan_is_the_naive_one(layer):
    w, (_, sx), (dy, dx) = layer["weights"], layer["stride"], layer["dilation"]
    source = engine._source(np.zeros((layer["image"].shape[0], 9, 14), np.float32), sx)
    got = engine._dense_plan(w, source, sx, dy, dx, True, layer["groups"])
    want = _naive_dense_plan(w, source, sx, dy, dx, layer["groups"])
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, np.asarray(b, a.dtype))


def test_large_non_separable_kernels_take_the_fft_path(monkeypatch):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((2, 1, 45, 41)).astype(np.float32)
    x = rng.random((1, 30, 40), dtype=np.float32)
    assert engine._wants_fft(w) and not engine._wants_fft(w[:, :, :31, :31])
    calls = []
    real = engine._correlate_fft
    monkeypatch.setattr(engine, "_correlate_fft", lambda *a: calls.append(1) or real(*a))
    got = conv2d(x, w, padding="same", border="reflect", stride=(2, 1), dilation=(1, 2))
    assert calls == [1]
    want = reference_conv2d(x, w, padding="same", border="reflect", stride=(2, 1),
                            dilation=(1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_fast_lengths():
    assert [engine._fast_len(n) for n in (1, 7, 97, 1026, 2049)] == [1, 8, 100, 1080, 2160]


def test_which_kernels_take_the_separable_path():
    from convcli import generators as g

    sep = lambda k: engine._separable_terms(np.asarray(k, np.float32)[None, None])  # noqa: E731
    assert sep(g.gaussian(sigma=5, size=31)).count(0) == 1  # rank 1: 62 taps instead of 961
    assert sep(g.log(sigma=2)).count(0) == 3  # Gxx G + G Gyy, less the mean: rank 3
    assert sep(g.dog(sigma=1)).count(0) == 2
    assert sep(g.sobel("x")) is None  # 6 taps either way: not worth a second pass
    assert sep(np.random.default_rng(0).standard_normal((7, 7))) is None  # full rank


@pytest.mark.parametrize("shape, stride, groups, size, want", [
    ((64, 64, 3, 3), 1, 1, 224, "winograd"),  # VGG-like
    ((128, 64, 3, 3), 1, 1, 112, "winograd"),
    ((64, 3, 7, 7), 2, 1, 224, "gemm"),  # a ResNet stem
    ((64, 64, 1, 1), 1, 1, 224, "gemm"),  # pointwise
    ((64, 32, 3, 3), 2, 2, 64, "gemm"),  # strided, two groups
    ((32, 1, 3, 3), 1, 32, 512, "direct"),  # depthwise
    ((8, 1, 3, 3), 1, 1, 1024, "direct"),  # an edge bank
    ((32, 3, 5, 5), 1, 1, 1024, "gemm"),
    ((16, 3, 7, 7), 2, 1, 2048, "gemm"),
    ((16, 3, 5, 5), 1, 1, 1024, "direct"),  # shallow and few filters: direct kernels win
    ((8, 3, 7, 7), 1, 1, 1024, "direct"),
    ((32, 16, 5, 5), 1, 1, 256, "gemm"),
    ((64, 64, 3, 3), 1, 1, 6, "gemm"),  # too few tiles for Winograd
])
def test_which_layers_take_which_algorithm(shape, stride, groups, size, want):
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ho = -(-size // stride)
    got = engine._algorithm(EngineConfig(), w, engine._plans_for(w, groups), groups, 1,
                            (stride, stride), (1, 1), True, ho, ho)
    assert got == want


def test_bands_stay_within_their_working_set(monkeypatch):
    sizes = []
    real = gemm._buffer
    monkeypatch.setattr(gemm, "_buffer", lambda s, name, n: sizes.append(n) or real(s, name, n))
    rng = np.random.default_rng(5)
    x = rng.random((16, 96, 96), dtype=np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    conv2d(x, w, padding=1, config=EngineConfig(algorithm="gemm", threads=1))
    one_row = (16 * 9 + 1) * 98 + 16 * 98  # the smallest band: one output row
    assert max(sizes) * 4 <= max(gemm.BAND_BYTES, one_row * 4)
    sizes.clear()
    conv2d(x, w, padding=1, config=EngineConfig(algorithm="winograd", threads=1))
    assert max(sizes) * 4 <= gemm.WINOGRAD_BAND_BYTES
    assert max(sizes) < 9 * x.size  # never the input times the kernel size


def test_prepare_compiles_every_kernel_without_running_them():
    from convcli import jit

    engine.prepare()
    assert all(kernel.signatures for kernel in jit.KERNELS)
    # and every kernel can be saved in the cache (no dynamic globals, e.g. ctypes pointers)
    assert all(kernel._cache._impl.check_cachable(result) for kernel in jit.KERNELS
               for result in kernel.overloads.values())


def test_each_kernel_is_compiled_once_whatever_the_layer():
    """The wrappers always pass the same types (one specialisation, one cache entry)."""
    from convcli import jit

    rng = np.random.default_rng(8)
    for c, size, border in [(8, 9, "zero"), (16, 30, "reflect")]:
        x = rng.random((c, size, size + 3), dtype=np.float32)
        for algorithm in ("direct", "gemm", "winograd"):
            for k, stride in [(3, 1), (1, 1), (3, 2)] if algorithm != "winograd" else [(3, 1)]:
                w = rng.standard_normal((16, c, k, k)).astype(np.float32)
                conv2d(x, w, padding=k // 2, stride=stride, border=border,
                       config=EngineConfig(method="jit", algorithm=algorithm, threads=2))
        conv2d(x[:1], np.ones((1, 1, 9, 9), np.float32), method="jit")  # separable
        for pool in (ops.max_pool2d, ops.avg_pool2d):
            pool(x, (3, 2), 2, 1, config=EngineConfig(method="jit", threads=2))
    assert [len(kernel.signatures) for kernel in jit.KERNELS] == [1] * len(jit.KERNELS)


# --- configuration: explicit values, no influence from earlier calls -----------------------

def test_engine_config_is_a_validated_frozen_value():
    import dataclasses

    cfg = EngineConfig(method="jit", algorithm="gemm", threads=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.threads = 3
    assert dataclasses.replace(cfg, threads=1).threads == 1 and cfg.threads == 2
    with pytest.raises(UsageError, match="algorithm must be one of auto, direct, gemm"):
        EngineConfig(algorithm="im2row")
    with pytest.raises(UsageError, match="threads must be a whole number >= 1, got 0"):
        EngineConfig(threads=0)
    with pytest.raises(UsageError, match="method 'fft' is the fft algorithm"):
        EngineConfig(method="fft", algorithm="gemm")
    with pytest.raises(UsageError, match="config must be an EngineConfig"):
        conv2d(np.ones((4, 4)), np.ones((3, 3)), config={"method": "jit"})


def test_plan_for_job_decides_the_executor_once():
    assert engine.plan_for_job(1e6) == EngineConfig(method="numpy")
    assert engine.plan_for_job(1e10, threads=3) == EngineConfig(method="jit", threads=3)
    assert engine.plan_for_job(None) == EngineConfig()
    assert engine.plan_for_job(1e6, "fft").method == "fft"
    with pytest.raises(UsageError, match="engine must be one of auto, jit, numpy, fft"):
        engine.plan_for_job(1e6, "gpu")


def test_library_calls_do_not_depend_on_earlier_calls(tmp_path, samples):
    """What the old module-level plan leaked: after a command-line run with --engine fft
    and a thread limit, a plain call must give the same bits and leave numba's threads."""
    import numba
    from typer.testing import CliRunner

    from convcli.cli import app

    rng = np.random.default_rng(2)
    x = rng.random((1, 40, 50), dtype=np.float32)
    w = rng.standard_normal((2, 1, 5, 5)).astype(np.float32)
    before = conv2d(x, w, padding="same")
    threads = numba.get_num_threads()
    assert not same_bits(before, conv2d(x, w, padding="same", method="fft"))  # differs
    result = CliRunner().invoke(app, ["apply", str(samples / "camera.png"), "-f", "sobel_x",
                                      "--engine", "fft", "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    engine.plan(method="fft", threads=1)
    engine.set_threads(1)
    conv2d(x, w, padding="same", config=EngineConfig(method="jit", threads=1))
    assert same_bits(conv2d(x, w, padding="same"), before)
    assert numba.get_num_threads() == threads


def test_threads_are_set_for_the_call_only():
    import numba
    from threadpoolctl import threadpool_info

    blas = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    numba_threads = numba.get_num_threads()
    x = np.random.default_rng(0).random((8, 20, 20), dtype=np.float32)
    w = np.ones((8, 8, 3, 3), np.float32)
    for algorithm in ("direct", "gemm", "winograd"):
        conv2d(x, w, config=EngineConfig(algorithm=algorithm, threads=1))
    assert numba.get_num_threads() == numba_threads
    assert [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"] == blas


def test_blas_runs_on_one_thread_during_bands_whichever_thread_calls(monkeypatch):
    """The bands are convcli's threads; BLAS must not start its own on top of them, also when
    the call comes from a thread other than the first that limited it."""
    import threading

    from threadpoolctl import threadpool_info

    def blas_threads():  # NumPy's BLAS (SciPy may bring its own, which convcli never calls)
        blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
        return [lib["num_threads"] for lib in
                [lib for lib in blas if "numpy" in lib["filepath"]] or blas]

    before, seen = blas_threads(), []
    real = gemm._buffer
    monkeypatch.setattr(gemm, "_buffer",
                        lambda s, name, n: seen.append(blas_threads()) or real(s, name, n))
    x = np.random.default_rng(0).random((8, 40, 40), dtype=np.float32)
    w = np.ones((8, 8, 3, 3), np.float32)
    conv2d(x, w, config=EngineConfig(algorithm="gemm", threads=2))
    other = threading.Thread(target=lambda: conv2d(x, w, config=EngineConfig(
        algorithm="winograd", threads=2)))
    other.start()
    other.join()
    assert seen and all(threads == [1] * len(before) for threads in seen)
    assert blas_threads() == before


def _python(code: str, env=None) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_auto_takes_numpy_for_small_calls_until_renting_costs_more_than_buying():
    code = ("import sys, numpy as np\nfrom convcli import conv2d, engine\n"
            "conv2d(np.ones((1, 64, 64)), np.ones((1, 1, 3, 3)))\n"
            "print('convcli.jit' in sys.modules, 'numba' in sys.modules)\n"
            "engine._numpy_seconds[0] = engine.JIT_START_SECONDS\n"
            "conv2d(np.ones((1, 64, 64)), np.ones((1, 1, 3, 3)))\n"
            "print('convcli.jit' in sys.modules)")
    assert _python(code) == ["False", "False", "True"]


def test_importing_the_compiler_leaves_the_host_numba_settings_alone(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env["CONVCLI_CACHE_DIR"] = str(tmp_path / "cache")
    code = ("import os, numba\n"
            "before = (numba.config.CACHE_DIR, numba.config.THREADING_LAYER)\n"
            "import convcli.jit as jit\n"
            "print(before == (numba.config.CACHE_DIR, numba.config.THREADING_LAYER))\n"
            "print('NUMBA_CACHE_DIR' in os.environ, 'NUMBA_THREADING_LAYER' in os.environ)\n"
            "print(jit.correlate._cache.cache_path)")
    same, cache_env, layer_env, path = _python(code, env)
    assert (same, cache_env, layer_env) == ("True", "False", "False")
    assert path.startswith(str(tmp_path / "cache"))


class _FakeKernel:
    """A kernel whose compile fails while its cache is the given one (a corrupt cache), or
    always (a bug in the code)."""

    def __init__(self, cache, always: bool):
        self._cache, self.always, self.signatures = cache, always, []

    def compile(self, signature):
        from numba.core.caching import NullCache

        if self.always or not isinstance(self._cache, NullCache):
            raise TypeError("cannot compile")
        self.signatures.append(signature)


class _FakeCache:
    cache_path = "/nowhere"

    class _impl:
        filename_base = "jit.correlate-1.py311"


def test_a_failing_compile_drops_only_that_kernels_cache_and_only_if_it_is_to_blame(
        monkeypatch):
    from numba.core.caching import NullCache

    from convcli import jit

    dropped = []
    monkeypatch.setattr(jit, "drop_kernel_files", lambda *a: dropped.append(a))
    code_bug = _FakeKernel(_FakeCache(), always=True)
    with pytest.raises(TypeError):
        jit._compile(code_bug, ())
    assert dropped == [] and isinstance(code_bug._cache, _FakeCache)
    bad_cache = _FakeKernel(_FakeCache(), always=False)
    jit._compile(bad_cache, ())
    assert dropped == [("/nowhere", "jit.correlate-1.py311")]
    assert isinstance(bad_cache._cache, NullCache) and bad_cache.signatures == [()]


def test_dropping_a_kernels_cache_files_leaves_the_others(tmp_path):
    from convcli import jitcache

    names = ["jit.correlate-84.py311.nbi", "jit.correlate-84.py311.1.nbc",
             "jit.correlate-84.py311.2.nbc", "jit.correlate_separable-99.py311.nbi",
             "jit.correlate_separable-99.py311.1.nbc", "notes.txt"]
    for name in names:
        (tmp_path / name).write_text("x")
    assert jitcache.drop_kernel_files(tmp_path, "jit.correlate-84.py311") == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[3:])


# --- groups, out= and bad settings --------------------------------------------------------

def test_depthwise_groups_match_each_channel_on_its_own():
    rng = np.random.default_rng(4)
    x = rng.random((5, 17, 13), dtype=np.float32)
    w = rng.standard_normal((10, 1, 3, 3)).astype(np.float32)  # two filters per channel
    got = conv2d(x, w, padding="same", groups=5, activation="none")
    for c in range(5):
        want = conv2d(x[c:c + 1], w[2 * c:2 * c + 2], padding="same", activation="none")
        assert same_bits(got[2 * c:2 * c + 2], want)


def test_out_buffer_is_filled_and_returned():
    rng = np.random.default_rng(6)
    x = rng.random((8, 12, 12), dtype=np.float32)
    w = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    for algorithm in ("direct", "gemm", "winograd", "fft"):
        cfg = EngineConfig(algorithm=algorithm)
        out = np.full((4, 12, 12), np.nan, np.float32)
        assert conv2d(x, w, padding=1, config=cfg, out=out) is out
        assert same_bits(out, conv2d(x, w, padding=1, config=cfg))
    with pytest.raises(UsageError, match=r"out must be a writable C-contiguous float32 array "
                                         r"of shape \(4, 12, 12\), got float64 \(4, 12, 12\)"):
        conv2d(x, w, padding=1, out=np.zeros((4, 12, 12)))
    with pytest.raises(UsageError, match="out must not share memory with the image"):
        conv2d(x, w[:, :, :1, :1], out=x[:4])


@pytest.mark.parametrize("groups, message", [
    (3, r"groups \(3\) must divide both the image's channels \(8\) and the number of filters "
        r"\(4\)"),
    (0, "groups must be a whole number >= 1, got 0"),
    (2, "the kernels have 8 channels per group of 2 but the image has 8; they must match"),
])
def test_bad_groups(groups, message):
    with pytest.raises((InputError, UsageError), match=message):
        conv2d(np.zeros((8, 5, 5)), np.ones((4, 8, 3, 3)), groups=groups)


def test_algorithms_that_do_not_fit_the_layer_are_refused():
    x, w = np.zeros((2, 9, 9), np.float32), np.ones((2, 2, 5, 5), np.float32)
    with pytest.raises(UsageError, match="the winograd algorithm needs 3x3 kernels at stride 1 "
                                         "and dilation 1, got 5x5 kernels"):
        conv2d(x, w, config=EngineConfig(algorithm="winograd"))
    with pytest.raises(UsageError, match="conv2d_depthwise runs the direct and fft algorithms"):
        conv2d_depthwise(x, w[:, 0], config=EngineConfig(algorithm="gemm"))


def test_winograd_on_a_non_finite_image_takes_the_gemm_route():
    img = np.ones((8, 9, 9), np.float32)
    img[3, 4, 4] = np.inf
    w = np.random.default_rng(1).standard_normal((8, 8, 3, 3)).astype(np.float32)
    got = conv2d(img, w, padding=1, activation="none", config=EngineConfig(algorithm="winograd"))
    with np.errstate(invalid="ignore"):
        want = reference_conv2d(img, w, padding=(1, 1, 1, 1), activation="none")
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))


# --- properties ---------------------------------------------------------------------------

@given(layers(), st.integers(0, 2))
def test_too_small_image_is_an_error_not_garbage(layer, short):
    # Make the kernel's dilated footprint larger than the padded image along one axis.
    layer["padding"] = "valid"
    _, h, w = layer["image"].shape
    d = layer["dilation"][0]
    kh = (h + short) // d + 2  # footprint (kh - 1) * d + 1 > h
    layer["weights"] = np.ones((layer["groups"], layer["image"].shape[0] // layer["groups"], kh,
                                1), np.float32)
    layer["bias"] = None
    assert not _fits(layer)
    with pytest.raises(InputError, match="smaller than the kernel's footprint"):
        conv2d(**layer)


@given(layers())
def test_same_padding_gives_ceil_of_input_over_stride(layer):
    layer["padding"] = "same"
    out = conv2d(**layer)
    _, h, w = layer["image"].shape
    assert out.shape[1:] == (math.ceil(h / layer["stride"][0]), math.ceil(w / layer["stride"][1]))


@given(layers(), st.floats(-3, 3), st.floats(-3, 3))
def test_linear_before_the_activation(layer, a, b):
    assume(_fits(layer))
    layer.update(activation="none", bias=None)
    x = layer.pop("image")
    y = x[::-1, ::-1].copy()
    lhs = conv2d(a * x + b * y, **layer)
    rhs = a * conv2d(x, **layer) + b * conv2d(y, **layer)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=1e-4)


@given(layers())
def test_activations_relate_as_defined(layer):
    assume(_fits(layer))
    raw = conv2d(**dict(layer, activation="none"))
    relu = conv2d(**dict(layer, activation="relu"))
    absolute = conv2d(**dict(layer, activation="abs"))
    assert (relu >= 0).all() and (absolute >= 0).all()
    np.testing.assert_array_equal(relu, np.maximum(raw, 0))
    np.testing.assert_array_equal(absolute, np.abs(raw))


@given(layers())
def test_depthwise_is_each_channel_on_its_own(layer):
    assume(_fits(layer))
    w2d = layer["weights"][:, 0]
    kwargs = settings_of(layer)
    del kwargs["groups"]
    got = conv2d_depthwise(layer["image"], w2d, layer["bias"], **kwargs)
    for c in range(layer["image"].shape[0]):
        want = reference_conv2d(layer["image"][c:c + 1], w2d[:, None], layer["bias"], **kwargs)
        np.testing.assert_allclose(got[:, c], want, rtol=1e-5, atol=1e-5)


# --- analytic images with known answers ---------------------------------------------------

def test_impulse_returns_the_kernel_rotated_half_a_turn():
    # Cross-correlation (no flip): an impulse answers with the kernel rotated by 180 degrees.
    k = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    img = np.zeros((1, 9, 9), np.float32)
    img[0, 4, 4] = 1
    out = conv2d(img, k[None, None], padding="valid", activation="none")[0]
    nz = np.argwhere(out != 0)
    (y0, x0), (y1, x1) = nz.min(0), nz.max(0)
    np.testing.assert_array_equal(out[y0:y1 + 1, x0:x1 + 1], k[::-1, ::-1])


@pytest.mark.parametrize("border", BORDERS)
def test_zeros_stay_zeros(border):
    w = np.random.default_rng(1).standard_normal((4, 2, 5, 3)).astype(np.float32)
    out = conv2d(np.zeros((2, 12, 10), np.float32), w, padding="same", border=border,
                 activation="none")
    assert out.shape == (4, 12, 10) and not out.any()


@pytest.mark.parametrize("border", ["reflect", "replicate", "wrap"])
def test_normalised_blur_keeps_a_constant_image_constant(border):
    k = np.full((1, 1, 5, 7), 1 / 35, np.float32)
    out = conv2d(np.full((1, 20, 16), 0.3, np.float32), k, padding="same", border=border)
    np.testing.assert_allclose(out, 0.3, rtol=1e-6)


def test_zero_border_darkens_only_the_rim():
    k = np.full((1, 1, 3, 3), 1 / 9, np.float32)
    out = conv2d(np.ones((1, 8, 8), np.float32), k, padding="same", border="zero")[0]
    np.testing.assert_allclose(out[1:-1, 1:-1], 1.0, rtol=1e-6)
    assert out[0, 0] == pytest.approx(4 / 9) and out[0, 3] == pytest.approx(6 / 9)


def test_step_edge_lights_one_column():
    img = np.zeros((1, 6, 10), np.float32)
    img[:, :, 5:] = 1.0
    out = conv2d(img, np.array([[[[-1.0, 1.0]]]], np.float32), padding="valid")[0]
    assert out.shape == (6, 9)
    lit = np.argwhere(out != 0)
    assert set(lit[:, 1]) == {4} and len(lit) == 6 and (out[:, 4] == 1).all()


def test_sobel_answers_to_brightness_rising_to_the_right():
    img = np.zeros((1, 6, 10), np.float32)
    img[:, :, 5:] = 1.0
    sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
    out = conv2d(img, sobel_x, padding="same", border="replicate")[0]
    assert set(np.argwhere(out != 0)[:, 1]) == {4, 5}
    np.testing.assert_array_equal(out[:, 4:6], 4.0)
    assert not conv2d(img[:, :, ::-1], sobel_x, padding="same", border="replicate").any()


def test_non_finite_pixels_propagate_like_torch():
    # 0 * inf is nan: zero taps may only be skipped when the image is finite.
    img = np.ones((1, 5, 5), np.float32)
    img[0, 2, 2] = np.inf
    k = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32)
    out = conv2d(img, k, padding="same", activation="none")[0]
    with np.errstate(invalid="ignore"):  # the oracle computes 0 * inf on purpose
        want = reference_conv2d(img, k[None, None], padding="same", activation="none")[0]
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    assert np.isnan(out).sum() == 8 and np.isinf(out[2, 2])


def test_accepts_2d_image_and_kernel_and_integer_input():
    out = conv2d(np.arange(16).reshape(4, 4), np.ones((2, 2)), padding="valid", activation="none")
    assert out.shape == (1, 3, 3) and out.dtype == np.float32
    assert out[0, 0, 0] == 0 + 1 + 4 + 5


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="cuda"), "method must be one of auto, jit, numpy"),
    (dict(stride=0), "stride must be a whole number >= 1"),
    (dict(dilation=(1, 0)), "dilation must be a whole number >= 1"),
    (dict(padding="full"), "padding must be same, valid"),
    (dict(border="mirror"), "border must be one of zero, reflect, replicate, wrap"),
    (dict(activation="gelu"), "activation must be one of none, relu, abs"),
])
def test_bad_settings_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        conv2d(np.zeros((1, 4, 4)), np.ones((1, 1, 3, 3)), **kwargs)


def test_channel_mismatch_is_an_error():
    with pytest.raises(InputError, match="the kernels have 3 channels but the image has 1"):
        conv2d(np.zeros((1, 4, 4)), np.ones((2, 3, 3, 3)))


def test_bias_must_match_filters():
    with pytest.raises(UsageError, match=r"bias must hold one value per filter \(2\)"):
        conv2d(np.zeros((1, 4, 4)), np.ones((2, 1, 3, 3)), bias=[1.0, 2.0, 3.0])
