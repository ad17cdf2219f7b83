"""A bank of several layers (normalize, conv, activation, pool, ...) and the runner that
applies one to an image or a feature map.

A conv layer is a KernelBank (see convcli.bank) run by the engine; the other layers are
convcli.ops. Maps travel between layers as one float32 array (C, H, W) and a name for
each channel:

- a conv layer's channels are its filters (a depthwise layer's are every filter on every
  input channel, in (filter, channel) order, named "filter/channel", so that
  ``data.reshape(F, C, H, W)`` is the layout of engine.conv2d_depthwise; on a one-channel
  input just the filter names);
- normalize, activation and pool keep their input's channels and names.

The first conv layer of input mode gray or rgb fits an image to its mode as a single bank
does (images.as_channels: luminance, or a gray channel repeated); every other layer needs
exactly the channels it was made for, and a mismatch is one InputError naming both counts
and the layer. Depthwise layers take any number of channels.

Cost: a network costs what its layers cost one by one. Each conv layer's filters run
through the engine in passes of equal settings, written in place into the layer's one
output array; every other layer reads its input once and writes a new array (activations
work in place on arrays of the runner's own when nobody else has seen them). At most the
input, one layer's input and its output (plus the engine's padded copy of a conv layer's
input) are held at a time; see Network.peak_bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, Union

import numpy as np

from . import geometry, ops
from .errors import InputError, UsageError

if TYPE_CHECKING:
    from .bank import KernelBank
    from .engine import EngineConfig

Maps = tuple[np.ndarray, list[str]]  # float32 (C, H, W) and a name for each channel


@dataclass(frozen=True)
class Normalize:
    """y[c] = (x[c] - mean[c]) / std[c]; one value applies to every channel."""

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class Conv:
    name: str
    bank: KernelBank


@dataclass(frozen=True)
class Activation:
    """One of ops.FUNCTIONS; params holds every parameter it takes, defaults filled in."""

    name: str
    function: str
    params: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Pool:
    """torch's max_pool2d (mode "max") or avg_pool2d (mode "avg"); see convcli.ops."""

    name: str
    mode: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: geometry.Pads | str = (0, 0, 0, 0)  # (top, bottom, left, right), same, valid
    dilation: tuple[int, int] = (1, 1)  # max only
    ceil_mode: bool = False
    count_include_pad: bool = True  # avg only


@dataclass(frozen=True)
class LRN:
    """ONNX's LRN (AlexNet's local response normalisation across channels); see
    convcli.ops.local_response_norm."""

    name: str
    size: int
    alpha: float = 1e-4
    beta: float = 0.75
    bias: float = 1.0


Layer = Union[Normalize, Conv, Activation, Pool, LRN]


@dataclass(frozen=True)
class Network:
    name: str
    description: str
    layers: tuple[Layer, ...]
    origin: str = ""  # the file it came from
    provenance: dict = field(default_factory=dict)

    @property
    def last_conv(self) -> Conv | None:
        convs = [layer for layer in self.layers if isinstance(layer, Conv)]
        return convs[-1] if convs else None

    @property
    def input_channels(self) -> int | None:
        """The channels the first conv layer works on (gray 1, rgb 3, dense C x groups;
        gray and rgb also take an image of 1 or 3 channels, see the module's docstring);
        None when any number will do (depthwise, or no conv layer)."""
        for layer in self.layers:
            if isinstance(layer, Conv):
                return None if layer.bank.input == "depthwise" else layer.bank.channels
        return None

    def select(self, names: Iterable[str]) -> Network:
        """Keep only the named filters of the last conv layer, in the order given."""
        index, conv = self._last_conv("pick filters")
        names = list(names)
        known = {f.name for f in conv.bank.filters}
        for n in names:
            if n not in known:
                from .bank import _hint

                raise UsageError(f"layer {conv.name!r} of {self.name!r} has no filter {n!r}"
                                 f"{_hint(n, known)}; see 'convcli bank show {self.name}'")
        return self._with(index, replace(conv, bank=conv.bank.select(names)))

    def override(self, **settings: Any) -> Network:
        """Apply settings (already parsed, None = keep) to every filter of the last conv
        layer, as KernelBank.override."""
        index, conv = self._last_conv("change filter settings")
        return self._with(index, replace(conv, bank=conv.bank.override(**settings)))

    def shapes(self, input_shape: Sequence[int]) -> list[tuple[int, int, int]]:
        """The (C, H, W) each layer gives for an input of ``input_shape`` ((C, H, W) or
        (H, W)), checked as run would check it (InputError naming the layer), computing
        nothing."""
        c, h, w = _shape3(input_shape)
        out = []
        first = True
        for layer in self.layers:
            try:
                if isinstance(layer, Conv):
                    c_in = _conv_channels(layer.bank, c, first)
                    first = False
                    h, w = _conv_hw(layer.bank, (h, w))
                    c = len(layer.bank.filters) * (
                        c_in if layer.bank.input == "depthwise" else 1)
                elif isinstance(layer, Pool):
                    h, w = _pool_hw(layer, (h, w))
                elif isinstance(layer, Normalize):
                    _check_normalize(layer, c)
            except (InputError, UsageError) as e:
                raise _in_layer(layer, e) from None
            out.append((c, h, w))
        return out

    def work(self, input_shape: Sequence[int]) -> float:
        """About how many multiply-adds (or comparisons) one input of this shape costs."""
        c, h, w = _shape3(input_shape)
        total = 0.0
        first = True
        for layer, (c2, h2, w2) in zip(self.layers, self.shapes((c, h, w))):
            if isinstance(layer, Conv):
                b = layer.bank
                c_in = _conv_channels(b, c, first)
                first = False
                copies = c_in if b.input == "depthwise" else 1
                total += float(sum(np.count_nonzero(f.weights) for f in b.filters)) \
                    * copies * h2 * w2
            elif isinstance(layer, Pool):
                total += float(c2) * h2 * w2 * layer.kernel[0] * layer.kernel[1]
            elif isinstance(layer, LRN):
                total += float(c2) * h2 * w2 * (layer.size + 3)
            else:
                total += float(c2) * h2 * w2
            c, h, w = c2, h2, w2
        return total

    def peak_bytes(self, input_shape: Sequence[int]) -> int:
        """About the most memory run() holds at once for one input of this shape, in
        bytes, counting the input itself: the largest over the layers of its input, its
        output and its scratch (a conv layer's padded input, a depthwise layer's
        reordering, an activation's temporary)."""
        c, h, w = _shape3(input_shape)
        given = 4 * c * h * w
        peak = given
        first = True
        for i, (layer, (c2, h2, w2)) in enumerate(zip(self.layers, self.shapes((c, h, w)))):
            inp, out = 4 * c * h * w, 4 * c2 * h2 * w2
            scratch = 0
            if isinstance(layer, Conv):
                b = layer.bank
                c_in = _conv_channels(b, c, first)
                first = False
                pad = max(_pads_of(b, (h, w)))
                scratch = 4 * c_in * (h + 2 * pad) * (w + 2 * pad)
                if b.input == "depthwise":
                    scratch += out
                elif any(f.geometry.activation not in _FUSED for f in b.filters):
                    scratch += out // 2
                if b.filters[0].geometry.window_norm is not None:  # localnorm's planes
                    scratch += 8 * ((h + 2 * pad) * (w + 2 * pad) + 6 * h2 * w2)
            elif isinstance(layer, Pool):
                scratch = max(4 * c * h * w2, 4 * c * h2 * w)
            elif isinstance(layer, Activation):
                scratch = out + out // 4
            elif isinstance(layer, LRN):
                scratch = 2 * inp + 2 * 4 * h * w  # the float64 squares, a window's sum
            # The first layer reads the given input itself; later ones hold their own.
            peak = max(peak, given + (inp if i else 0) + out + scratch)
            c, h, w = c2, h2, w2
        return peak

    def _last_conv(self, what: str) -> tuple[int, Conv]:
        for index in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[index]
            if isinstance(layer, Conv):
                return index, layer
        raise UsageError(f"{self.name!r} has no conv layer to {what} of")

    def _with(self, index: int, layer: Layer) -> Network:
        layers = list(self.layers)
        layers[index] = layer
        return replace(self, layers=tuple(layers))


_FUSED = ("relu", "none", "abs")  # activations the engine applies as it writes (bank.py)


def run(x: Any, net: Network, *, config: EngineConfig | None = None,
        each: Callable[[Layer, Maps], None] | None = None,
        names: Sequence[str] | None = None) -> Maps:
    """Apply every layer of ``net`` in order to ``x`` (C, H, W) (or (H, W)), an image or a
    feature map; returns the last layer's maps: (float32 (C', H', W'), channel names).

    config: the engine's EngineConfig for every conv layer. each(layer, maps): called after
    every layer with its maps (which are never changed afterwards). names: the input's
    channel names (default "c0", "c1", ...), which a depthwise layer puts after its
    filters' names. ``x`` itself is never changed.
    """
    data = ops.as_input(x)
    chan = [f"c{i}" for i in range(data.shape[0])] if names is None else [str(n) for n in names]
    if len(chan) != data.shape[0]:
        raise UsageError(f"names must give one name per input channel ({data.shape[0]}), "
                         f"got {len(chan)}")
    if not isinstance(net, Network):
        raise UsageError(f"net must be a Network, got {type(net).__name__}")
    mine = False  # whether data is an array of our own that nobody else has seen
    first = True
    for layer in net.layers:
        try:
            if isinstance(layer, Normalize):
                _check_normalize(layer, data.shape[0])
                data = ops.normalize(data, layer.mean, layer.std)
            elif isinstance(layer, Activation):
                inplace = mine and each is None
                data = ops.activate(data, layer.function, out=data if inplace else None,
                                    **dict(layer.params))
            elif isinstance(layer, Pool):
                data = _pool(data, layer, config)
            elif isinstance(layer, LRN):
                data = ops.local_response_norm(data, layer.size, layer.alpha, layer.beta,
                                               layer.bias)
            elif isinstance(layer, Conv):
                data, chan = _conv(data, chan, layer.bank, config, first)
                first = False
            else:
                raise UsageError(f"unknown layer {type(layer).__name__}")
        except (InputError, UsageError) as e:
            raise _in_layer(layer, e) from None
        mine = True
        if each is not None:
            each(layer, (data, chan))
    return data, chan


# --- one layer at a time ------------------------------------------------------------------

def _conv(x: np.ndarray, chan: list[str], bank: KernelBank, config: EngineConfig | None,
          first: bool) -> Maps:
    from . import images

    if first and bank.input in ("gray", "rgb") and x.shape[0] in (1, 3):
        x = np.ascontiguousarray(images.as_channels(x, bank.input), np.float32)
    c = _conv_channels(bank, x.shape[0], first=False)
    h, w = _conv_hw(bank, x.shape[1:])
    filters = bank.filters
    depthwise = bank.input == "depthwise"
    copies = c if depthwise else 1
    out = np.empty((len(filters) * copies, h, w), np.float32)
    per = out.reshape(len(filters), copies, h, w)
    for part, groups, members in passes(bank, c):
        run_of = members == list(range(members[0], members[-1] + 1))
        target = out[members[0]:members[-1] + 1] if run_of and not depthwise else None
        got = conv_pass(x[part], bank, groups, members, config, out=target)
        if depthwise:
            per[members] = got
        elif not run_of:
            out[members] = got
    if depthwise:
        names = [f.name for f in filters] if c == 1 else \
            [f"{f.name}/{n}" for f in filters for n in chan]
    else:
        names = [f.name for f in filters]
    return out, names


def conv_pass(x: np.ndarray, bank: KernelBank, groups: int, members: list[int],
              config: EngineConfig | None, out: np.ndarray | None = None) -> np.ndarray:
    """One engine call of a conv layer (see passes): the filters ``members`` of ``bank``,
    which share their settings, over ``x`` (the pass's input channels), with their bias,
    per-window normalisation (convcli.localnorm) and activation. Returns float32
    (len(members), H', W'), or (len(members), C, H', W') for a depthwise layer; ``out``
    (dense only): the array to write into."""
    from . import engine

    filters = bank.filters
    geo = filters[members[0]].geometry
    w = np.stack([filters[i].weights for i in members])
    b = np.array([filters[i].bias for i in members], np.float32)
    eps = geo.window_norm
    act = geo.activation if geo.activation in _FUSED and eps is None else "none"
    kwargs: dict[str, Any] = dict(stride=geo.stride, padding=geo.padding,
                                  dilation=geo.dilation, border=geo.border, activation=act,
                                  config=config)
    # Normalised windows: the engine gives w . p alone; bias and activation come after.
    bias = b if eps is None else None
    if bank.input == "depthwise":
        got = engine.conv2d_depthwise(x, w, bias, **kwargs)
    else:
        got = engine.conv2d(x, w, bias, groups=groups, out=out, **kwargs)
    if eps is not None:
        _normalise_windows(got, x, w, b, geo, groups, bank.input == "depthwise")
    if act != geo.activation:
        ops.activate(got, geo.activation, out=got)
    return got


def _normalise_windows(got: np.ndarray, x: np.ndarray, w: np.ndarray, b: np.ndarray,
                       geo: Any, groups: int, depthwise: bool) -> None:
    """got (conv without bias) -> the features of per-window normalised input, in place."""
    from . import localnorm

    assert geo.window_norm is not None
    k = (int(w.shape[-2]), int(w.shape[-1]))
    pads = geometry.resolve_pads(geo.padding, x.shape[1:], k, geo.stride, geo.dilation)
    sums = w.reshape(len(w), -1).sum(axis=1, dtype=np.float64)

    def stats(part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return localnorm.window_stats(part, k, geo.stride, geo.dilation, pads, geo.border)

    if depthwise:  # each channel is its own window: stats per channel, (C, H', W')
        both = [stats(x[ch:ch + 1]) for ch in range(x.shape[0])]
        mean, var = np.stack([m for m, _ in both]), np.stack([v for _, v in both])
        localnorm.normalise_maps(got, sums, b, mean, var, geo.window_norm)
        return
    per_filter, per_group = len(w) // groups, x.shape[0] // groups
    for g in range(groups):  # torch's groups: filter f reads group f // (F / groups)
        mean, var = stats(x[g * per_group:(g + 1) * per_group])
        rows = slice(g * per_filter, (g + 1) * per_filter)
        localnorm.normalise_maps(got[rows], sums[rows], b[rows], mean, var, geo.window_norm)


def passes(bank: KernelBank, c: int) -> list[tuple[slice, int, list[int]]]:
    """The engine calls of a conv layer on an input of ``c`` channels: (the input channels
    to pass, groups, filter indices), one per set of filters of equal settings and kernel
    shape (and, for a grouped layer whose filters no longer line up with torch's groups
    after a selection, one per input group)."""
    filters = bank.filters
    keys = [(f.geometry, f.weights.shape) for f in filters]
    G = bank.groups
    per = len(filters) // G if len(filters) % G == 0 else 0
    aligned = G == 1 or (per > 0 and len(set(keys)) == 1
                         and all(f.group == i // per for i, f in enumerate(filters)))
    passes: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        passes.setdefault(key if aligned else (filters[i].group, key), []).append(i)
    if aligned:
        return [(slice(None), G, members) for members in passes.values()]
    cg = c // G
    return [(slice(filters[m[0]].group * cg, (filters[m[0]].group + 1) * cg), 1, m)
            for m in passes.values()]


_passes = passes  # the name pipeline.compute_maps first used


def _pool(x: np.ndarray, layer: Pool, config: EngineConfig | None = None) -> np.ndarray:
    if layer.mode == "max":
        return ops.max_pool2d(x, layer.kernel, layer.stride, _padding(layer.padding),
                              layer.dilation, layer.ceil_mode, config=config)
    if layer.mode == "avg":
        return ops.avg_pool2d(x, layer.kernel, layer.stride, _padding(layer.padding),
                              layer.ceil_mode, layer.count_include_pad, config=config)
    raise UsageError(f"pooling mode must be max or avg, got {layer.mode!r}")


def _padding(p: Any) -> Any:
    return list(p) if isinstance(p, tuple) else p


# --- shapes and checks, shared by run and Network.shapes -------------------------------------

def _conv_channels(bank: KernelBank, c: int, first: bool) -> int:
    """The channels a conv layer reads from an input of ``c`` (after fitting an image to a
    first gray or rgb layer); InputError when they do not fit."""
    if bank.input == "depthwise":
        return c
    if first and bank.input in ("gray", "rgb") and c in (1, 3):
        return bank.channels
    need = bank.channels
    if c != need:
        why = {"gray": " (input gray: one channel)", "rgb": " (input rgb: three channels)"
               }.get(bank.input, "" if bank.groups == 1 else
                     f" ({need // bank.groups} per group, {bank.groups} groups)")
        raise InputError(f"its filters need {need} input channels{why} but its input has {c}")
    return c


def _conv_hw(bank: KernelBank, hw: Sequence[int]) -> tuple[int, int]:
    """The one map size of a conv layer; InputError when the kernel does not fit or the
    filters' maps differ in size (a layer's maps must share one array)."""
    sizes: dict[tuple[int, int], list[str]] = {}
    h, w = int(hw[0]), int(hw[1])
    for f in bank.filters:
        g = f.geometry
        k = f.weights.shape[1:]
        pads = geometry.resolve_pads(g.padding, (h, w), k, g.stride, g.dilation)
        size = geometry.output_hw((h, w), k, g.stride, g.dilation, pads)
        if min(size) < 1:
            foot = geometry.footprint(k, g.dilation)
            raise InputError(f"the input ({h}x{w}) is smaller than filter {f.name!r}'s "
                             f"footprint ({foot[0]}x{foot[1]}) with padding {g.padding!r}")
        sizes.setdefault(size, []).append(f.name)
    if len(sizes) > 1:
        shown = "; ".join(f"{'x'.join(map(str, s))}: {', '.join(n[:3])}"
                          + (" ..." if len(n) > 3 else "") for s, n in sizes.items())
        raise InputError(f"its filters give maps of different sizes ({shown}); the maps of "
                         "a layer must share one size: give its filters the same stride, "
                         "padding and dilation")
    return next(iter(sizes))


def _pads_of(bank: KernelBank, hw: tuple[int, int]) -> list[int]:
    out = [0]
    for f in bank.filters:
        g = f.geometry
        out.extend(geometry.resolve_pads(g.padding, hw, f.weights.shape[1:], g.stride,
                                         g.dilation))
    return out


def _pool_hw(layer: Pool, hw: tuple[int, int]) -> tuple[int, int]:
    k, s, pads, d = ops.pool_settings(layer.kernel, layer.stride, _padding(layer.padding),
                                      layer.dilation, layer.ceil_mode, hw)
    size = ops.pool_output_hw(hw, k, s, pads, d, layer.ceil_mode)
    if min(size) < 1:
        foot = geometry.footprint(k, d)
        raise InputError(f"the input ({hw[0]}x{hw[1]}) is smaller than the pooling window "
                         f"({foot[0]}x{foot[1]}) with padding {pads}")
    return size


def _check_normalize(layer: Normalize, c: int) -> None:
    n = max(len(layer.mean), len(layer.std))
    if n not in (1, c):
        raise InputError(f"normalizes {n} channels but its input has {c}")


def _in_layer(layer: Layer, e: InputError | UsageError) -> InputError | UsageError:
    """The same error, naming the layer first."""
    return type(e)(f"layer {layer.name!r}: {e}", settings=e.settings)


def _shape3(shape: Sequence[int]) -> tuple[int, int, int]:
    s = tuple(int(n) for n in shape)
    if len(s) == 2:
        s = (1,) + s
    if len(s) != 3 or min(s) < 1:
        raise InputError(f"the input must be (C, H, W) or (H, W) and non-empty, got shape {s}")
    return s[0], s[1], s[2]
