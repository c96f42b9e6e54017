"""model=sequential: a network written as a list of layers, as with Keras' Sequential API.

  layers:
    - {conv1d: {filters: 64, kernel: 3, activation: relu}}
    - {max_pool1d: 2}
    - {gru: {units: 32, return_sequences: true}}
    - {gru: 32}
    - {dropout: 0.3}
    - dense                     # no width: the task's (classes, 1 when binary, horizon)

A layer is a kind (`flatten`), `{kind: value}` (the kind's main argument: `{dense: 16}`) or
`{kind: {arguments}}`. Only output widths are typed; every input size follows from
`input_shape`, the data's example input without the batch axis (resolved from the data config
and saved with the checkpoint, so the network rebuilds from its hyperparameters alone).
Shapes are worked out while building, with the CNN family's size arithmetic (models/layers.py);
a layer that does not fit is a ConfigError naming `model.layers[i]`, its kind and the shapes.

Layouts: images are (channels, height, width) as the data gives them; sequences are (steps,
features), as in Keras, and the 1D layers (conv1d, pooling, recurrent) read them so; a 1-D input
such as a sine window becomes (steps, 1) before them. Outputs are logits: a final `softmax` /
`sigmoid` activation (Keras' classifier head) is left to the task's loss.

Masks, as Keras': `mask_zero` on an embedding masks the steps whose id is 0, `{masking:
mask_value}` the steps whose features all equal mask_value (anywhere in the sequence, e.g.
Keras' pad_sequences pads at the front). Recurrent layers skip masked steps (their state holds
through them), global 1D pools ignore them; the mask follows the steps through dense, dropout,
normalisation and recurrent layers that return sequences, and ends where the steps stop lining
up with it (a conv, a pool, flatten).
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from nnlab.errors import ConfigError, UserError
from nnlab.models.cells import CELLS as CUSTOM_CELLS
from nnlab.models.cnn import SeparableConv
from nnlab.models.init import Initializer, init_module
from nnlab.models.layers import (
    ActivationName,
    activation,
    dense,
    output_size,
    same_padding,
    transposed_padding,
)
from nnlab.models.recurrent import keras_cell, make_rnn
from nnlab.models.state import RecurrentState, run_rnn, state_sizes
from nnlab.schema import PositiveInt, Rate

log = logging.getLogger(__name__)

RECURRENT = {"simple_rnn": "rnn", "rnn": "rnn", "lstm": "lstm", "gru": "gru"}
# nnlab's own cells by their names; Keras' `simple_rnn` stays torch's nn.RNN (cuDNN, packed
# sequences), as RecurrentNet's `rnn` is: the same parameters as model=recurrent's.
RECURRENT.update({name: name for name in CUSTOM_CELLS if name not in RECURRENT})
HEADS = ("softmax", "sigmoid")  # left to the loss when they end the network


# --- Layers whose layout differs from torch's, or that carry the padding mask ---------------------


class MaskAware:
    """A layer whose forward takes and returns `(x, mask)` (mask: (batch, steps) or None)."""


class Reshape(nn.Module):
    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.shape = tuple(shape)

    def extra_repr(self) -> str:
        return str(self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


class Permute(nn.Module):
    def __init__(self, dims: Sequence[int]):
        super().__init__()
        self.dims = tuple(dims)  # 1-based, the batch axis stays first (Keras' Permute)

    def extra_repr(self) -> str:
        return str(self.dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, *self.dims)


class Softmax(nn.Softmax):
    def __init__(self):
        super().__init__(dim=-1)


class Pad(nn.Module):
    """Zeros around the spatial axes: `pads` as F.pad takes them (last axis first)."""

    def __init__(self, pads: Sequence[int], value: float = 0.0):
        super().__init__()
        self.pads, self.value = tuple(pads), value

    def extra_repr(self) -> str:
        return str(self.pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pads, value=self.value)


def _steps_last(cls):
    """A torch 1D layer (channels, steps) made to read Keras' (steps, channels)."""

    class Layer(cls):
        pads: tuple[int, ...] = ()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.transpose(1, 2)
            if self.pads:
                x = F.pad(x, self.pads)
            return super().forward(x).transpose(1, 2)

    Layer.__name__ = Layer.__qualname__ = cls.__name__.replace("1d", "1D")
    return Layer


Conv1D = _steps_last(nn.Conv1d)
MaxPool1D = _steps_last(nn.MaxPool1d)
AvgPool1D = _steps_last(nn.AvgPool1d)
BatchNorm1D = _steps_last(nn.BatchNorm1d)
SeparableConv1D = _steps_last(SeparableConv)


class Conv2D(nn.Conv2d):
    pads: tuple[int, ...] = ()  # Keras' uneven `same` zeros (stride > 1), before the conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pads) if self.pads else x)


class SeparableConv2D(SeparableConv):
    pads: tuple[int, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pads) if self.pads else x)


class ChannelLayerNorm(nn.LayerNorm):
    """Layer normalisation over the channels of (C, H, W) maps (Keras' axis=-1, channels last)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class Embedding(MaskAware, nn.Embedding):
    """Keras' Embedding: uniform +-0.05 start; `mask_zero`: id 0 is padding (its row stays 0)."""

    def __init__(self, input_dim: int, output_dim: int, mask_zero: bool = False):
        super().__init__(input_dim, output_dim, padding_idx=0 if mask_zero else None)
        self.mask_zero = mask_zero
        with torch.no_grad():
            self.weight.uniform_(-0.05, 0.05)
            if mask_zero:
                self.weight[0].zero_()

    def forward(self, x, mask=None):
        return super().forward(x), (x != 0) if self.mask_zero else mask


class GlobalPool(MaskAware, nn.Module):
    """Max or mean over the steps of (steps, C) or the map of (C, H, W); masked steps skipped."""

    def __init__(self, mode: str, dims: int):
        super().__init__()
        self.mode, self.dims = mode, dims

    def extra_repr(self) -> str:
        return f"{self.mode}, {self.dims}D"

    def forward(self, x, mask=None):
        if self.dims == 2:
            x = x.flatten(2)
            return (x.amax(2) if self.mode == "max" else x.mean(2)), None
        if mask is None:
            return (x.amax(1) if self.mode == "max" else x.mean(1)), None
        keep = mask[..., None]
        if self.mode == "max":
            return x.masked_fill(~keep, float("-inf")).amax(1), None
        return (x * keep).sum(1) / keep.sum(1).clamp(min=1), None


class LastStep(nn.Module):
    """A recurrent layer's output without return_sequences: the forward pass's state at the
    last (real) step, and the backward pass's at step 0, as h_n holds them."""

    def __init__(self, units: int, bidirectional: bool):
        super().__init__()
        self.units, self.bidirectional = units, bidirectional

    def forward(self, outputs: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if lengths is None:
            last = outputs[:, -1]
        else:
            last = outputs[torch.arange(outputs.size(0), device=outputs.device), lengths - 1]
        if not self.bidirectional:
            return last
        return torch.cat([last[:, : self.units], outputs[:, 0, self.units :]], dim=-1)


class Recurrent(RecurrentState, MaskAware, nn.Module):
    """One recurrent layer (models/recurrent.py's `make_rnn`: torch's or nnlab's cells).

    With a mask (from `masking` or an embedding's `mask_zero`), masked steps are skipped, as
    Keras' recurrent layers skip them: the state holds through them, the output at a masked
    step is the one of the last real step before it (zeros before the first; the backward pass
    of a bidirectional layer: the first real step after it), and the last-step output is the
    last real step's. Done by moving each sequence's real steps to its front (in order) and
    running the layer on them as on sequences of their lengths.

    Where it starts (models/state.py): zeros, a learned state (`initial_state: learned`), the
    state carried from the batch before (`stateful: true`), or a state given by other nodes of
    a graph (`run(..., initial)`, Keras' `layer(x, initial_state=[h, c])`). A given state and
    the one `run` returns (Keras' `return_state`) are Keras' list: per direction (forward
    first) `h`, and `c` for an LSTM, each (batch, units); nnlab's cells other than keras_lstm
    carry one tensor of their whole state (`state_parts`)."""

    def __init__(
        self,
        rnn: nn.Module,
        units: int,
        bidirectional: bool,
        return_sequences: bool,
        stateful: bool = False,
        initial_state: str = "zeros",
        return_state: bool = False,
        key: str = "model.layers",
    ):
        super().__init__()
        self.rnn = rnn
        self.units, self.bidirectional = units, bidirectional
        self.last = None if return_sequences else LastStep(units, bidirectional)
        self.return_state = return_state
        sizes = state_sizes(rnn)
        self.init_state(stateful, initial_state, 2 if bidirectional else 1, sizes, key)
        # Keras' names and sizes of one direction's state: torch's LSTM and keras_lstm (whose
        # one tensor is [h | c]) have h and c; every other cell one tensor, h
        lstm = isinstance(rnn, nn.LSTM) or getattr(rnn, "cell_name", None) == "keras_lstm"
        self.state_parts = {"h": units, "c": units} if lstm else {"h": sizes[0]}

    def forward(self, x, mask=None):
        out, mask, _ = self.run(x, mask)
        return out, mask

    def run(self, x, mask=None, initial: Sequence[torch.Tensor] | None = None):
        """(output, mask, the final state as Keras' list) from the state `initial` (Keras'
        list; None: the layer's own start)."""
        h0 = self.given_state(initial) if initial is not None else None
        if h0 is None:
            h0 = self.start_state(x.shape[0], x.device)
        if mask is None:
            outputs, _, end = run_rnn(self.rnn, x, None, h0)
            self.keep(end)
            out = outputs if self.last is None else self.last(outputs, None)
            return out, None, self.keras_state(end)
        lengths = mask.sum(1)
        # real steps first, each sequence's in their order (a stable sort of "is masked")
        order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
        compact = x.gather(1, order[..., None].expand_as(x))
        run = lengths.clamp(min=1)  # a sequence with no real step: its output is zeroed below
        # (nnlab's cells hold their state after each sequence's length, torch's run packed)
        outputs, _, end = run_rnn(self.rnn, compact, run, h0)
        self.keep(end)
        if self.last is not None:
            out = self.last(outputs, run) * (lengths > 0)[:, None].to(outputs.dtype)
            return out, None, self.keras_state(end)
        return self.expand(outputs, mask, lengths), mask, self.keras_state(end)

    def given_state(self, parts: Sequence[torch.Tensor]) -> Any:
        """Keras' list (per direction: h[, c]) as the encoder's start state."""
        n = len(self.state_parts)
        directions = [parts[d * n : (d + 1) * n] for d in range(2 if self.bidirectional else 1)]
        if isinstance(self.rnn, nn.LSTM):  # (h, c), each (directions, batch, units)
            return tuple(torch.stack([d[i] for d in directions]) for i in range(2))
        return torch.stack([torch.cat(list(d), dim=-1) for d in directions])

    def keras_state(self, end: Any) -> list[torch.Tensor]:
        """The encoder's end state as Keras' list (per direction: h[, c])."""
        out: list[torch.Tensor] = []
        for d in range(2 if self.bidirectional else 1):
            if isinstance(end, tuple):  # torch's LSTM
                out += [end[0][d], end[1][d]]
            else:
                out += list(end[d].split(list(self.state_parts.values()), dim=-1))
        return out

    def expand(self, outputs: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor):
        """Outputs of the compacted real steps back at every step of the masked sequence."""
        before = mask.long().cumsum(1)  # real steps up to and including each step
        width = outputs.shape[-1]

        def read(index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
            index = index.clamp(0, outputs.shape[1] - 1)[..., None].expand(-1, -1, width)
            return outputs.gather(1, index) * valid[..., None].to(outputs.dtype)

        forward = read(before - 1, before > 0)  # the last real step at or before t
        if not self.bidirectional:
            return forward
        after = before - mask.long()  # the first real step at or after t, as a compact index
        backward = read(after, after < lengths[:, None])
        return torch.cat([forward[..., : self.units], backward[..., self.units :]], dim=-1)


class Masking(MaskAware, nn.Module):
    """Keras' Masking: a step whose features all equal `mask_value` is masked (downstream
    recurrent layers skip it, global 1D pools ignore it) and its features set to zero."""

    def __init__(self, mask_value: float = 0.0):
        super().__init__()
        self.mask_value = float(mask_value)

    def extra_repr(self) -> str:
        return f"mask_value={self.mask_value}"

    def forward(self, x, mask=None):
        keep = (x != self.mask_value).any(-1)
        return x * keep[..., None].to(x.dtype), keep


class TimeDistributed(nn.Module):
    """The wrapped layers applied to every step of (steps, ...) on its own."""

    def __init__(self, inner: nn.Sequential):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        y = self.inner(x.reshape(b * t, *x.shape[2:]))
        return y.reshape(b, t, *y.shape[1:])


# --- Building: one function per kind, (args, shape) -> (modules, output shape) ---------------------


class Spec:
    """One config entry being built: its key, kind and arguments, and the input shape."""

    def __init__(self, index: int, kind: str, args: dict, shape: tuple[int, ...], prefix: str):
        self.key, self.kind, self.args, self.shape = f"{prefix}[{index}]", kind, args, shape
        self.index = index
        self.used: set[str] = set()
        self.states = False  # whether a recurrent layer may return its state (a graph node)

    def error(self, message: str) -> ConfigError:
        return ConfigError(self.key, f"{self.kind} on input shape {self.shape}: {message}")

    def get(self, name: str, default: Any = None, *aliases: str) -> Any:
        for n in (name, *aliases):
            self.used.add(n)
            if n in self.args and self.args[n] is not None:
                return self.args[n]
        return default

    def positive(self, name: str, default: Any = None, *aliases: str) -> int:
        value = self.get(name, default, *aliases)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.error(f"{name} must be a whole number >= 1, got {value!r}")
        return value

    def pair(self, name: str, default: Any, dims: int, *aliases: str) -> tuple[int, ...]:
        value = self.get(name, default, *aliases)
        values = tuple(value) if isinstance(value, Sequence) else (value,) * dims
        if len(values) != dims or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values
        ):
            raise self.error(f"{name} must be a whole number >= 1 or {dims} of them, got {value!r}")
        return values

    def rank(self, *ranks: int, what: str = "") -> None:
        if len(self.shape) not in ranks:
            raise self.error(f"needs {what or ' or '.join(map(str, ranks)) + '-D samples'}")

    def activation(self, name: str | None) -> list[nn.Module]:
        if name is None:
            return []
        return [Softmax()] if name == "softmax" else [activation(name, f"{self.key}.activation")]


def _spatial(spec: Spec, dims: int) -> tuple[int, list[int]]:
    """(channels, spatial sizes) of a 1D (steps, C) or 2D (C, H, W) input."""
    if dims == 1:
        spec.rank(2, what="(steps, features) sequences")
        return spec.shape[1], [spec.shape[0]]
    spec.rank(3, what="(channels, height, width) images")
    return spec.shape[0], list(spec.shape[1:])


def _geometry(spec: Spec, sizes, kernel, stride, dilation=None) -> tuple[list[int], list[int]]:
    """Output sizes and F.pad's zeros (last axis first) of a window under Keras' padding."""
    padding = spec.get("padding", "valid")
    if padding not in ("same", "valid"):
        raise spec.error(f"padding must be same or valid, got {padding!r}")
    dilation = dilation or (1,) * len(sizes)
    out, pads = [], []
    for size, k, s, d in zip(sizes, kernel, stride, dilation, strict=True):
        k = d * (k - 1) + 1
        before, after = same_padding(size, k, s) if padding == "same" else (0, 0)
        label = f"{spec.index} ({spec.kind}) on input {spec.shape}"
        out.append(output_size(spec.key, label, size + before + after, k, s, 0, floor=True))
        pads = [before, after, *pads]
    return out, pads


def _conv(spec: Spec, dims: int, separable: bool = False):
    channels, sizes = _spatial(spec, dims)
    filters = spec.positive("filters", None, "units")
    kernel = spec.pair("kernel", 3, dims, "kernel_size")
    stride = spec.pair("strides", 1, dims, "stride")
    dilation = spec.pair("dilation", 1, dims, "dilation_rate")
    out, pads = _geometry(spec, sizes, kernel, stride, dilation)
    bias = bool(spec.get("use_bias", True))
    if separable:
        multiplier = spec.positive("depth_multiplier", 1)
        if dilation != (1,) * dims or not bias:
            raise spec.error("separable convolutions take no dilation and keep their bias here")
        cls = SeparableConv1D if dims == 1 else SeparableConv2D
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        layer = cls(conv, channels, filters, kernel, stride, 0, multiplier)
    else:
        cls = Conv1D if dims == 1 else Conv2D
        layer = cls(channels, filters, kernel, stride, 0, dilation, bias=bias)
    if any(pads):  # pad symmetric zeros in the conv itself, uneven ones before it
        if all(pads[i] == pads[i + 1] for i in range(0, len(pads), 2)):
            inner = layer.depthwise if separable else layer
            inner.padding = tuple(pads[::2][::-1])
        else:
            layer.pads = tuple(pads)
    shape = (*out, filters) if dims == 1 else (filters, *out)
    return [layer, *spec.activation(spec.get("activation"))], shape


def _conv_transpose(spec: Spec):
    channels, sizes = _spatial(spec, 2)
    filters = spec.positive("filters", None, "units")
    kernel = spec.pair("kernel", 3, 2, "kernel_size")
    stride = spec.pair("strides", 1, 2, "stride")
    padding = spec.get("padding", "valid")
    if padding not in ("same", "valid"):
        raise spec.error(f"padding must be same or valid, got {padding!r}")
    geometry = [
        transposed_padding(spec.key, k, s, padding == "same")
        for k, s in zip(kernel, stride, strict=True)
    ]
    out = [
        (w - 1) * s - 2 * p + k + op
        for w, k, s, (p, op) in zip(sizes, kernel, stride, geometry, strict=True)
    ]
    layer = nn.ConvTranspose2d(
        channels,
        filters,
        kernel,
        stride,
        padding=tuple(p for p, _ in geometry),
        output_padding=tuple(op for _, op in geometry),
        bias=bool(spec.get("use_bias", True)),
    )
    return [layer, *spec.activation(spec.get("activation"))], (filters, *out)


def _pool(spec: Spec, mode: str, dims: int):
    channels, sizes = _spatial(spec, dims)
    window = spec.pair("pool_size", 2, dims, "size", "kernel")
    stride = spec.pair("strides", window, dims, "stride")
    out, pads = _geometry(spec, sizes, window, stride)
    before, after = pads[::2][::-1], pads[1::2][::-1]  # per axis, first axis first
    if any(b > w // 2 for b, w in zip(before, window, strict=True)):
        raise spec.error(f"same pooling needs padding {before} <= half the window {window}")
    kwargs: dict[str, Any] = {"padding": before, "ceil_mode": any(after)}
    if mode == "avg":
        kwargs["count_include_pad"] = False  # Keras averages the real values only
    cls = {("max", 1): MaxPool1D, ("avg", 1): AvgPool1D}.get((mode, dims))
    cls = cls or (nn.MaxPool2d if mode == "max" else nn.AvgPool2d)
    if dims == 1:
        kwargs["padding"] = before[0]
        layer = cls(window[0], stride[0], **kwargs)
    else:
        layer = cls(window, stride, **kwargs)
    shape = (*out, channels) if dims == 1 else (channels, *out)
    return [layer], shape


def _global_pool(spec: Spec, mode: str, dims: int | None):
    dims = dims or (1 if len(spec.shape) == 2 else 2)
    channels, _ = _spatial(spec, dims)
    return [GlobalPool(mode, dims)], (channels,)


def _dense(spec: Spec, output: int | None, last: bool):
    spec.rank(1, 2, 3, 4)
    units = spec.get("units")
    if units is None and last and output is not None:
        units = output
    if units is None:
        raise spec.error("needs units (only the last layer's width comes from the task)")
    units = spec.positive("units", units)
    act = spec.get("activation")
    if last and act in HEADS:
        act = None
    layers = dense(spec.shape[-1], units, None, bool(spec.get("use_bias", True)))
    return layers + spec.activation(act), (*spec.shape[:-1], units)


def _recurrent(spec: Spec, cell: str):
    spec.rank(2, what="(steps, features) sequences")
    units = spec.positive("units", None, "hidden_size")
    bidirectional = bool(spec.get("bidirectional", False))
    return_sequences = bool(spec.get("return_sequences", False))
    nonlinearity = spec.get("activation", "tanh", "nonlinearity")
    gates = spec.get("inner_activation", "sigmoid", "recurrent_activation")
    truncate = spec.get("truncate_gradient")
    cell = keras_cell(cell, nonlinearity, gates, truncate)
    rnn = make_rnn(
        cell,
        spec.shape[1],
        units,
        bidirectional=bidirectional,
        nonlinearity=nonlinearity,
        forget_bias=float(spec.get("forget_bias", 1.0)),
        depth=spec.get("depth", 3),
        inner_activation=gates,
        truncate_gradient=truncate,
    )
    width = units * (2 if bidirectional else 1)
    start = spec.get("initial_state", "zeros")
    return_state = bool(spec.get("return_state", False))
    if start not in ("zeros", "learned"):
        raise ConfigError(f"{spec.key}.initial_state", f"zeros or learned, got {start!r}")
    if return_state and not spec.states:
        raise no_return_state(spec.key)
    layer = Recurrent(
        rnn, units, bidirectional, return_sequences, stateful=bool(spec.get("stateful", False)),
        initial_state=start, return_state=return_state, key=spec.key,
    )  # fmt: skip
    return [layer], ((spec.shape[0], width) if return_sequences else (width,))


def no_return_state(key: str) -> ConfigError:
    return ConfigError(
        f"{key}.return_state",
        "true, but only a graph node of one recurrent layer can give its final state to other "
        "layers (model=graph: {inputs: x, lstm: {units: 8, return_state: true}}); remove it here",
    )


def _reshape(spec: Spec):
    target = list(spec.get("target_shape", None, "shape") or [])
    total = math.prod(spec.shape)
    known = math.prod(d for d in target if d != -1)
    if not target or target.count(-1) > 1 or any(d == 0 or d < -1 for d in target):
        raise spec.error(f"target_shape must be sizes (one may be -1), got {target}")
    if -1 in target:
        if total % known:
            raise spec.error(f"{total} values cannot be reshaped to {target}")
        target[target.index(-1)] = total // known
    if math.prod(target) != total:
        raise spec.error(f"{total} values cannot be reshaped to {tuple(target)}")
    return [Reshape(target)], tuple(target)


def _permute(spec: Spec):
    dims = list(spec.get("dims", None) or [])
    if sorted(dims) != list(range(1, len(spec.shape) + 1)):
        raise spec.error(f"dims must order the axes 1..{len(spec.shape)}, got {dims}")
    return [Permute(dims)], tuple(spec.shape[d - 1] for d in dims)


def _norm(spec: Spec, kind: str):
    spec.rank(1, 2, 3)
    rank = len(spec.shape)
    if kind == "batch_norm":
        cls = {1: nn.BatchNorm1d, 2: BatchNorm1D, 3: nn.BatchNorm2d}[rank]
        return [cls(spec.shape[-1] if rank < 3 else spec.shape[0])], spec.shape
    if rank == 3:
        return [ChannelLayerNorm(spec.shape[0])], spec.shape
    return [nn.LayerNorm(spec.shape[-1])], spec.shape


def _zero_padding(spec: Spec, dims: int):
    _, sizes = _spatial(spec, dims)
    pads = spec.pair("padding", 1, dims)
    out = [s + 2 * p for s, p in zip(sizes, pads, strict=True)]
    zeros = [p for p in pads[::-1] for _ in (0, 1)]
    if dims == 1:
        return [Permute((2, 1)), Pad(zeros), Permute((2, 1))], (out[0], spec.shape[1])
    return [Pad(zeros)], (spec.shape[0], *out)


# The argument `{kind: value}` sets.
MAIN_ARG = {
    "dense": "units",
    "activation": "activation",
    "dropout": "rate",
    "reshape": "target_shape",
    "permute": "dims",
    "embedding": "output_dim",
    "masking": "mask_value",
    "zero_padding1d": "padding",
    "zero_padding2d": "padding",
    **dict.fromkeys(
        ["conv1d", "conv2d", "separable_conv1d", "separable_conv2d", "conv2d_transpose"], "filters"
    ),
    **{f"{m}_pool{d}d": "pool_size" for m in ("max", "avg", "average") for d in (1, 2)},
    **dict.fromkeys(RECURRENT, "units"),
}
NO_ARGS = {
    "flatten",
    "batch_norm",
    "layer_norm",
    *(f"global_{m}_pool{d}" for m in ("max", "avg", "average") for d in ("", "1d", "2d")),
}
KINDS = sorted({*MAIN_ARG, *NO_ARGS, "time_distributed"})


# Each layer kind's arguments (aliases included), as nnlab.schema checks them before building.
_Pair = PositiveInt | list[PositiveInt]
_Act = ActivationName | Literal["softmax"] | None
_Padding = Literal["same", "valid"]
_Gate = Literal["sigmoid", "hard_sigmoid"]
_RecurrentAct = Literal["tanh", "relu", "sigmoid", "hard_sigmoid"]
# Keras' initialisers of a layer with weights (models/init.py), under Keras 2's and old Keras'
# names; a recurrent layer's recurrent weights have their own.
_INIT = {"kernel_initializer": Initializer, "init": Initializer}
_INNER_INIT = {"recurrent_initializer": Initializer, "inner_init": Initializer}
_CONV = {
    "filters": PositiveInt | None, "units": PositiveInt | None, "kernel": _Pair,
    "kernel_size": _Pair, "strides": _Pair, "stride": _Pair, "dilation": _Pair,
    "dilation_rate": _Pair, "use_bias": bool, "padding": _Padding, "activation": _Act, **_INIT,
}  # fmt: skip
_POOL = {"pool_size": _Pair, "size": _Pair, "kernel": _Pair, "strides": _Pair, "stride": _Pair,
         "padding": _Padding}  # fmt: skip


_GATED = ("lstm", "gru", "jzs1", "jzs2", "jzs3", "simple_deep_rnn", "keras_lstm", "keras_gru")


def _recurrent_args(cell: str) -> dict[str, Any]:
    args: dict[str, Any] = {
        "units": PositiveInt, "hidden_size": PositiveInt, "bidirectional": bool,
        "return_sequences": bool, "truncate_gradient": PositiveInt | None, **_INIT, **_INNER_INIT,
        # where it starts (models/state.py): Keras' stateful=True, a learned start state;
        # return_state: its final state readable by other nodes (model=graph)
        "stateful": bool, "initial_state": Literal["zeros", "learned"], "return_state": bool,
    }  # fmt: skip
    if cell in _GATED:  # old Keras' inner_activation (Keras 2: recurrent_activation)
        args |= {"inner_activation": _Gate, "recurrent_activation": _Gate}
    args |= {"activation": _RecurrentAct, "nonlinearity": _RecurrentAct}
    if cell in ("lstm", "keras_lstm"):
        args["forget_bias"] = float
    if cell in ("deep_rnn", "simple_deep_rnn"):
        args["depth"] = PositiveInt
    return args


LAYER_ARGS: dict[str, dict[str, Any]] = {
    "dense": {"units": PositiveInt | None, "activation": _Act, "use_bias": bool, **_INIT},
    "activation": {"activation": _Act},
    "dropout": {"rate": Rate},
    "masking": {"mask_value": float | int},
    "reshape": {"target_shape": list[int], "shape": list[int]},
    "permute": {"dims": list[PositiveInt]},
    "embedding": {
        "input_dim": PositiveInt,
        "num_words": PositiveInt,
        "output_dim": PositiveInt,
        "units": PositiveInt,
        "mask_zero": bool,
    },  # fmt: skip
    "conv1d": _CONV,
    "conv2d": _CONV,
    "separable_conv1d": {**_CONV, "depth_multiplier": PositiveInt},
    "separable_conv2d": {**_CONV, "depth_multiplier": PositiveInt},
    "conv2d_transpose": {k: v for k, v in _CONV.items() if not k.startswith("dilation")},
    "zero_padding1d": {"padding": _Pair},
    "zero_padding2d": {"padding": _Pair},
    **{k: _POOL for k in MAIN_ARG if "_pool" in k},
    **{k: _recurrent_args(cell) for k, cell in RECURRENT.items()},
    **{k: {} for k in NO_ARGS},
}


def check_layers(entries: Any, key: str, states: bool = False) -> None:
    """Every entry of a layer list: a known kind, each argument known to it and of its type
    (`model.layers[2].units`); raises nnlab.schema's ConfigError. `states`: whether a recurrent
    layer may return its state (a graph node of that one layer)."""
    from nnlab.schema import validate_mapping

    for i, entry in enumerate(entries or []):
        kind, value = _parse(entry, f"{key}[{i}]")
        if kind == "time_distributed":
            check_layers([value], f"{key}[{i}].time_distributed")
            continue
        args = _args(kind, value, f"{key}[{i}]")
        for name in sorted(set(args) - set(LAYER_ARGS[kind])):
            kinds = [k for k in RECURRENT if name in LAYER_ARGS[k]] if kind in RECURRENT else []
            if kinds:  # an argument of other cells: say which
                raise ConfigError(
                    f"{key}[{i}].{name}",
                    f"{args[name]!r} is not used by a {kind} layer: {name} applies to "
                    f"{', '.join(kinds)} layers only; remove it or choose one of those kinds",
                )
        fields = {name: (annotation, None) for name, annotation in LAYER_ARGS[kind].items()}
        validate_mapping(fields, args, f"{key}[{i}]", f"a {kind} layer")
        if args.get("return_state") and not states:
            raise no_return_state(f"{key}[{i}]")


def _parse(entry: Any, key: str) -> tuple[str, Any]:
    if isinstance(entry, str):
        kind, value = entry, None
    elif isinstance(entry, Mapping) and len(entry) == 1:
        kind, value = next(iter(entry.items()))
    else:
        raise ConfigError(
            key, f"a layer is a kind or {{kind: arguments}} (e.g. {{dense: 16}}), got {entry!r}"
        )
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind), KINDS, n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ConfigError(
            key, f"unknown layer kind {kind!r}; {hint}the kinds are {', '.join(KINDS)}"
        )
    return kind, value


def _args(kind: str, value: Any, spec_key: str) -> dict:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if kind in NO_ARGS:
        raise ConfigError(spec_key, f"{kind} takes no arguments, got {value!r}")
    return {MAIN_ARG[kind]: value}


# Layers with weights that Keras' initialisers set (models/init.py).
INITIALISED = {"dense", "conv1d", "conv2d", "separable_conv1d", "separable_conv2d"}
INITIALISED |= {"conv2d_transpose", *RECURRENT}


def run_chain(
    layers: Sequence[nn.Module],
    takes_mask: Sequence[bool],
    ends_mask: Sequence[bool],
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Layers in order, the padding mask threaded through the mask-aware ones and dropped after
    a layer whose steps no longer line up with it: (output, mask)."""
    for layer, takes, ends in zip(layers, takes_mask, ends_mask, strict=True):
        if takes:
            x, mask = layer(x, mask)
        else:
            x = layer(x)
        if ends:
            mask = None
    return x, mask


def build_layers(
    entries: Sequence[Any],
    shape: tuple[int, ...],
    output: int | None = None,
    prefix: str = "model.layers",
    init: str = "torch",
    inner_init: str = "torch",
) -> tuple[list[nn.Module], list[tuple[int, ...]]]:
    """The modules of a layer list and each entry's output shape, from the input `shape`.
    `init` / `inner_init`: the Keras initialisers of every dense, conv and recurrent layer
    (a layer's own `kernel_initializer` / `recurrent_initializer`, or old Keras' `init` /
    `inner_init`, wins)."""
    modules, shapes, _ = build_chain(entries, shape, output, prefix, init, inner_init)
    return modules, shapes


def build_chain(
    entries: Sequence[Any],
    shape: tuple[int, ...],
    output: int | None = None,
    prefix: str = "model.layers",
    init: str = "torch",
    inner_init: str = "torch",
    *,
    masked: bool = False,
    head: bool = True,
    from_input: bool = True,
    states: bool = False,
) -> tuple[list[nn.Module], list[tuple[int, ...]], bool]:
    """`build_layers`, for a part of a network (model=graph's nodes): `masked`, whether the
    input carries a padding mask; `head`, whether the list ends the network (a last softmax /
    sigmoid is then left to the loss); `from_input`, whether it reads the data itself (a 1-D
    series then gets one feature per step before a sequence layer). Also returns whether the
    output still carries the mask. `states`: whether a recurrent layer may return its final
    state (`return_state`: a graph node of that one layer)."""
    modules: list[nn.Module] = []
    shapes: list[tuple[int, ...]] = []
    start = shape
    for i, entry in enumerate(entries):
        kind, value = _parse(entry, f"{prefix}[{i}]")
        last = head and i == len(entries) - 1
        if kind == "time_distributed":
            spec = Spec(i, kind, {}, shape, prefix)
            spec.rank(2, 3, 4, what="(steps, ...) inputs")
            inner, inner_shapes = build_layers(
                [value], shape[1:], None, f"{spec.key}.time_distributed", init, inner_init
            )
            if any(isinstance(m, MaskAware) for m in inner):
                raise spec.error("wraps per-step layers only (no recurrent, embedding or pool)")
            modules.append(TimeDistributed(nn.Sequential(*inner)))
            shape = (shape[0], *inner_shapes[-1])
            shapes.append(shape)
            continue
        spec = Spec(i, kind, _args(kind, value, f"{prefix}[{i}]"), shape, prefix)
        spec.states = states
        sequence_layer = kind in (*RECURRENT, "masking") or (
            kind.endswith("1d") and "global" not in kind
        )
        at_input = from_input and all(s == start for s in (*shapes, shape))  # none changed it
        if sequence_layer and len(shape) == 1 and at_input:
            # the data's univariate series: one feature per step (as RecurrentNet reads it)
            modules.append(Reshape((shape[0], 1)))
            shape = spec.shape = (shape[0], 1)
        new, shape = _build(spec, kind, output, last)
        if kind in INITIALISED:
            kernel = spec.get("kernel_initializer", init, "init")
            recurrent = spec.get("recurrent_initializer", inner_init, "inner_init")
            init_module(nn.ModuleList(new), kernel, recurrent, key=f"{spec.key}.init")
        unknown = set(spec.args) - spec.used
        if unknown:
            raise spec.error(f"unknown arguments {sorted(unknown)}")
        modules += new
        if kind in ("embedding", "masking"):
            masked = kind == "masking" or bool(spec.args.get("mask_zero"))
        elif masked and (kind not in PASSES_MASK or len(shape) == 1):
            # the steps are gone or moved: no mask after it (a mask-aware layer drops it itself;
            # a flag, not a module, so parameter names stay those of the unmasked list)
            if modules and not any(isinstance(m, MaskAware) for m in new):
                modules[-1].ends_mask = True
            masked = False
        shapes.append(shape)
    return modules, shapes, masked


# Layers after which the padding mask still lines up with the steps.
PASSES_MASK = {"embedding", "masking", "dense", "activation", "dropout", "layer_norm"}
PASSES_MASK |= {"batch_norm"}
PASSES_MASK |= set(RECURRENT)  # return_sequences: the pads stay where they were


def _build(spec: Spec, kind: str, output: int | None, last: bool):
    if kind == "dense":
        return _dense(spec, output, last)
    if kind == "activation":
        name = spec.get("activation")
        return ([] if last and name in HEADS else spec.activation(name)), spec.shape
    if kind == "masking":
        spec.rank(2, what="(steps, features) sequences")
        return [Masking(spec.get("mask_value", 0.0))], spec.shape
    if kind == "dropout":
        rate = spec.get("rate", 0.5)
        if not (isinstance(rate, int | float) and 0.0 <= rate < 1.0):
            raise spec.error(f"rate must be in [0, 1), got {rate!r}")
        return [nn.Dropout(rate)], spec.shape
    if kind == "flatten":
        return [nn.Flatten()], (math.prod(spec.shape),)
    if kind == "reshape":
        return _reshape(spec)
    if kind == "permute":
        return _permute(spec)
    if kind in ("batch_norm", "layer_norm"):
        return _norm(spec, kind)
    if kind == "embedding":
        spec.rank(1, what="(steps,) integer ids")
        layer = Embedding(
            spec.positive("input_dim", None, "num_words"),
            spec.positive("output_dim", None, "units"),
            bool(spec.get("mask_zero", False)),
        )
        return [layer], (spec.shape[0], layer.embedding_dim)
    if kind in ("conv1d", "conv2d"):
        return _conv(spec, int(kind[-2]))
    if kind.startswith("separable_conv"):
        return _conv(spec, int(kind[-2]), separable=True)
    if kind == "conv2d_transpose":
        return _conv_transpose(spec)
    if kind.startswith("zero_padding"):
        return _zero_padding(spec, int(kind[-2]))
    if kind.startswith("global_"):
        dims = int(kind[-2]) if kind.endswith("d") else None
        return _global_pool(spec, "max" if "max" in kind else "avg", dims)
    if "_pool" in kind:
        return _pool(spec, "max" if kind.startswith("max") else "avg", int(kind[-2]))
    return _recurrent(spec, RECURRENT[kind])


class Sequential(nn.Module):
    """The layers of `layers`, sized from `input_shape` (one sample, no batch axis); a last
    `dense` without units gets `output_size` (the task's width), and the output must be that."""

    @classmethod
    def schema_check(cls, node: dict, key: str) -> None:
        """nnlab.schema's hook: each entry of `layers` checked against its kind's arguments."""
        check_layers(node.get("layers"), f"{key}.layers")

    def __init__(
        self,
        layers: Annotated[Sequence[Any], Field(min_length=1)],
        input_shape: Annotated[Sequence[PositiveInt], Field(min_length=1)],
        output_size: PositiveInt | None = None,
        init: Initializer = "torch",
        inner_init: Initializer = "torch",
    ):
        super().__init__()
        self.input_shape = tuple(input_shape)
        modules, self.shapes = build_layers(
            layers, self.input_shape, output_size, init=init, inner_init=inner_init
        )
        if output_size is not None and self.shapes[-1] != (output_size,):
            raise ConfigError(
                f"model.layers[{len(layers) - 1}]",
                f"the network ends with shape {self.shapes[-1]}, but the task needs "
                f"({output_size},) per sample; end with `dense` (its width comes from the task)",
            )
        self.layers = nn.ModuleList(modules)
        self.takes_mask = [isinstance(m, MaskAware) for m in modules]
        self.ends_mask = [getattr(m, "ends_mask", False) for m in modules]

    def forward(self, x: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        """`extra` (e.g. the sequence lengths) is not needed: the mask comes from the ids."""
        return run_chain(self.layers, self.takes_mask, self.ends_mask, x)[0]


# --- Config interpolations: sizes from the data and the task ---------------------------------------


def example_shape(data_cfg) -> list[int] | None:
    """`${nnlab.example_shape:${data}}`: the data's example input, one sample's sizes (the
    datamodule is only constructed: no data is read). None for a data config that cannot be
    built: building the data, first, then reports it with its key."""
    from nnlab.config import build

    try:
        example = build(data_cfg, "data").example_input(1)
    except UserError:
        return None
    first = example[0] if isinstance(example, tuple | list) else example
    return list(first.shape[1:])


def input_shapes(data_cfg) -> dict[str, list[int]] | None:
    """`${nnlab.inputs:${data}}`: {name: one sample's sizes} of each input the data gives, in
    the batch's order (data/base.py: batch_names). None for a data config that cannot be built
    (building the data then reports it with its key)."""
    from nnlab.config import build
    from nnlab.data.base import batch_names

    try:
        datamodule = build(data_cfg, "data")
        example = datamodule.example_input(1)
    except UserError:
        return None
    tensors = example if isinstance(example, tuple | list) else (example,)
    names, _ = batch_names(datamodule)
    return {name: list(t.shape[1:]) for name, t in zip(names, tensors, strict=True)}


def target_names(data_cfg) -> list[str] | None:
    """`${nnlab.targets:${data}}`: the names of the data's targets (None: one unnamed)."""
    from nnlab.config import build
    from nnlab.data.base import batch_names

    try:
        return batch_names(build(data_cfg, "data"))[1]
    except UserError:
        return None


def task_width(task_cfg, data_cfg) -> int | None:
    """`${nnlab.task_width:${task},${data}}`: outputs per sample the task scores: 1 for a binary
    classifier, the classes for another, the horizon for a forecaster."""
    if task_cfg.get("binary"):
        return 1
    if task_cfg.get("num_classes") is not None:
        return int(task_cfg.num_classes)
    horizon = data_cfg.get("horizon")
    return int(horizon) if horizon is not None else None
