"""The engine against torch.nn.functional.conv2d itself, when PyTorch is installed.

PyTorch is an optional oracle (never a dependency of convcli); .ci/run installs the CPU build
when a local wheel is available. The float64 oracle in test_engine.py covers the same ground.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from convcli import conv2d

torch = pytest.importorskip("torch", reason="PyTorch (optional oracle) is not installed")
F = torch.nn.functional

TORCH_PAD_MODES = {"reflect": "reflect", "replicate": "replicate", "wrap": "circular"}


@given(
    c=st.integers(1, 3), f=st.integers(1, 4), h=st.integers(4, 16), w=st.integers(4, 16),
    kh=st.integers(1, 4), kw=st.integers(1, 4), sy=st.integers(1, 3), sx=st.integers(1, 3),
    dy=st.integers(1, 2), dx=st.integers(1, 2), py=st.integers(0, 2), px=st.integers(0, 2),
    border=st.sampled_from(["zero", "reflect", "replicate", "wrap"]), seed=st.integers(0, 999),
)
def test_matches_torch(c, f, h, w, kh, kw, sy, sx, dy, dx, py, px, border, seed):
    assume(h + 2 * py >= (kh - 1) * dy + 1 and w + 2 * px >= (kw - 1) * dx + 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    k = rng.standard_normal((f, c, kh, kw)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    got = conv2d(x, k, b, stride=(sy, sx), padding=(py, px), dilation=(dy, dx), border=border)
    tx = torch.from_numpy(x)[None]
    if border == "zero":
        ref = F.conv2d(tx, torch.from_numpy(k), torch.from_numpy(b), stride=(sy, sx),
                       padding=(py, px), dilation=(dy, dx))
    else:
        tx = F.pad(tx, (px, px, py, py), mode=TORCH_PAD_MODES[border])
        ref = F.conv2d(tx, torch.from_numpy(k), torch.from_numpy(b), stride=(sy, sx),
                       dilation=(dy, dx))
    np.testing.assert_allclose(got, torch.relu(ref)[0].numpy(), rtol=1e-4, atol=1e-4)


@given(h=st.integers(3, 20), w=st.integers(3, 20), kh=st.integers(1, 6), kw=st.integers(1, 6),
       seed=st.integers(0, 999))
def test_same_padding_matches_torch_at_stride_one(h, w, kh, kw, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, h, w)).astype(np.float32)
    k = rng.standard_normal((3, 2, kh, kw)).astype(np.float32)
    got = conv2d(x, k, padding="same", activation="none")
    ref = F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(k), padding="same")[0].numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
