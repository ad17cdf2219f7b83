"""The engine against torch.nn.functional.conv2d itself, when PyTorch is installed.

PyTorch is an optional oracle (never a dependency of convcli); .ci/run installs the CPU build
when a local wheel is available. The float64 oracle in test_engine.py covers the same ground.
"""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from convcli import conv2d
from convcli.engine import EngineConfig

torch = pytest.importorskip("torch", reason="PyTorch (optional oracle) is not installed")
F = torch.nn.functional

TORCH_PAD_MODES = {"reflect": "reflect", "replicate": "replicate", "wrap": "circular"}


@pytest.mark.parametrize("algorithm", ["auto", "direct", "gemm"])
@settings(max_examples=30)
@given(
    g=st.integers(1, 3), c=st.integers(1, 2), f=st.integers(1, 3), h=st.integers(4, 16),
    w=st.integers(4, 16), kh=st.integers(1, 4), kw=st.integers(1, 4), sy=st.integers(1, 3),
    sx=st.integers(1, 3), dy=st.integers(1, 2), dx=st.integers(1, 2), py=st.integers(0, 2),
    px=st.integers(0, 2), border=st.sampled_from(["zero", "reflect", "replicate", "wrap"]),
    seed=st.integers(0, 999),
)
def test_matches_torch(algorithm, g, c, f, h, w, kh, kw, sy, sx, dy, dx, py, px, border, seed):
    assume(h + 2 * py >= (kh - 1) * dy + 1 and w + 2 * px >= (kw - 1) * dx + 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((c * g, h, w)).astype(np.float32)
    k = rng.standard_normal((f * g, c, kh, kw)).astype(np.float32)
    b = rng.standard_normal(f * g).astype(np.float32)
    got = conv2d(x, k, b, stride=(sy, sx), padding=(py, px), dilation=(dy, dx), border=border,
                 groups=g, config=EngineConfig(algorithm=algorithm))
    tx = torch.from_numpy(x)[None]
    if border == "zero":
        ref = F.conv2d(tx, torch.from_numpy(k), torch.from_numpy(b), stride=(sy, sx),
                       padding=(py, px), dilation=(dy, dx), groups=g)
    else:
        tx = F.pad(tx, (px, px, py, py), mode=TORCH_PAD_MODES[border])
        ref = F.conv2d(tx, torch.from_numpy(k), torch.from_numpy(b), stride=(sy, sx),
                       dilation=(dy, dx), groups=g)
    np.testing.assert_allclose(got, torch.relu(ref)[0].numpy(), rtol=1e-4, atol=1e-4)


@settings(max_examples=30)
@given(g=st.integers(1, 2), c=st.integers(4, 9), f=st.integers(1, 9), h=st.integers(1, 21),
       w=st.integers(1, 21), seed=st.integers(0, 999))
def test_winograd_matches_torch(g, c, f, h, w, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((c * g, h, w), dtype=np.float32)
    k = rng.standard_normal((f * g, c, 3, 3)).astype(np.float32)
    got = conv2d(x, k, padding=1, groups=g, activation="none",
                 config=EngineConfig(algorithm="winograd"))
    ref = F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(k), padding=1, groups=g)
    np.testing.assert_allclose(got, ref[0].numpy(), rtol=1e-4, atol=1e-4 * c)


def test_depthwise_layer_matches_torch():
    rng = np.random.default_rng(7)
    x = rng.random((16, 40, 33), dtype=np.float32)
    k = rng.standard_normal((32, 1, 3, 3)).astype(np.float32)  # two filters per channel
    got = conv2d(x, k, padding=1, groups=16, activation="none")
    ref = F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(k), padding=1, groups=16)
    np.testing.assert_allclose(got, ref[0].numpy(), rtol=1e-5, atol=1e-5)


# torch's own note that it pads a copy for even kernels; not convcli's
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@given(h=st.integers(3, 20), w=st.integers(3, 20), kh=st.integers(1, 6), kw=st.integers(1, 6),
       seed=st.integers(0, 999))
def test_same_padding_matches_torch_at_stride_one(h, w, kh, kw, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, h, w)).astype(np.float32)
    k = rng.standard_normal((3, 2, kh, kw)).astype(np.float32)
    got = conv2d(x, k, padding="same", activation="none")
    ref = F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(k), padding="same")[0].numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
