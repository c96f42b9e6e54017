"""model=graph: a network wired by name, as with Keras' Functional API: several inputs, layers
that read other layers, merge layers, several outputs.

  inputs: ${nnlab.inputs:${data}}      # {name: shape}: every input the data gives, in order
  layers:
    words: {inputs: ids, layers: [{embedding: {input_dim: 10000, output_dim: 32, mask_zero: true}},
                                  {conv1d: {filters: 32, kernel: 5, activation: relu}},
                                  global_max_pool1d]}
    bag:   {inputs: multihot, dense: {units: 16, activation: relu}}
    both:  {inputs: [words, bag], concatenate: {}}
    out:   {inputs: both, dense: {activation: sigmoid}}
  outputs: out                         # one output: a tensor; a list or {name: layer}: a dict

A node reads `inputs` (a data input's or another node's name, or a list of them) and is one
layer (`{kind: arguments}` as in model=sequential's lists), a chain of them (`layers: [...]`,
any model=sequential layer list), or a merge of several inputs: `add`, `subtract`, `multiply`,
`average`, `maximum`, `minimum` (equal shapes) or `concatenate` (`axis`, Keras' meaning: -1 the
last axis, 1 the first after the batch; the other sizes equal). Every input size follows from
the data's shapes (`inputs`), as in model=sequential; an output node's last `dense` without
units gets that output's width from the task (`output_size`). A padding mask (`mask_zero`)
flows along single-input nodes while the steps stay in place; a merge ends it (as a conv does).

`forward(*inputs)` takes the data's inputs in the order of `inputs` (unused ones are ignored:
the sequence view's lengths, say), or by name (`forward(ids=..., multihot=...)`, or one
{name: tensor} mapping), and returns the output tensor, or {output name: tensor}.
The schema checks the wiring before anything is built (`schema_check`): unknown names, cycles,
unknown kinds, merges of shapes that do not fit, layers no output needs; each is one error
naming the dotted key (`model.layers.both.inputs`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from nnlab.errors import ConfigError
from nnlab.models.init import Initializer
from nnlab.models.sequential import (
    KINDS,
    RECURRENT,
    MaskAware,
    Recurrent,
    build_chain,
    check_layers,
    run_chain,
)
from nnlab.schema import PositiveInt

MERGES = ("add", "subtract", "multiply", "average", "maximum", "minimum", "concatenate")
# besides the node's one kind (or `layers`): what it reads, and (a recurrent node) the nodes
# its state starts from (Keras' `layer(x, initial_state=[h, c])`)
NODE_KEYS = ("inputs", "initial_state")
BACKWARD = "_backward"  # a bidirectional node's backward state: `enc.h_backward`


class Merge(nn.Module):
    """Several tensors of one shape made one (Keras' merge layers), or joined on `axis`."""

    def __init__(self, mode: str, axis: int = -1):
        super().__init__()
        self.mode, self.axis = mode, axis

    def extra_repr(self) -> str:
        return self.mode + (f", axis={self.axis}" if self.mode == "concatenate" else "")

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.mode == "concatenate":
            return torch.cat(xs, dim=self.axis)
        if self.mode == "subtract":
            return xs[0] - xs[1]
        out = xs[0]
        for x in xs[1:]:
            if self.mode in ("add", "average"):
                out = out + x
            elif self.mode == "multiply":
                out = out * x
            else:
                out = torch.maximum(out, x) if self.mode == "maximum" else torch.minimum(out, x)
        return out / len(xs) if self.mode == "average" else out


class Chain(nn.Module):
    """A node's layers in order, with the padding mask threaded through the mask-aware ones;
    `keeps_mask`: whether its output's steps are still the input's (the mask passes on)."""

    def __init__(self, modules: Sequence[nn.Module], keeps_mask: bool):
        super().__init__()
        self.layers = nn.ModuleList(modules)
        self.takes_mask = [isinstance(m, MaskAware) for m in modules]
        # a layer after which the steps no longer line up with the mask (a flag the layer-list
        # builder may set on it), as model=sequential's forward reads it
        self.ends_mask = [getattr(m, "ends_mask", False) for m in modules]
        self.keeps_mask = keeps_mask

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        x, mask = run_chain(self.layers, self.takes_mask, self.ends_mask, x, mask)
        return x, (mask if self.keeps_mask else None)

    def run(self, x: torch.Tensor, mask: torch.Tensor | None, initial: list | None):
        """`forward` for a node of one recurrent layer that starts from a given state or
        returns its own: (output, mask, the final state as Keras' list)."""
        i = next(i for i, m in enumerate(self.layers) if isinstance(m, Recurrent))
        before, after = slice(0, i), slice(i + 1, None)
        x, mask = run_chain(
            self.layers[before], self.takes_mask[before], self.ends_mask[before], x, mask
        )
        x, mask, end = self.layers[i].run(x, mask, initial)
        if self.ends_mask[i]:
            mask = None
        x, mask = run_chain(
            self.layers[after], self.takes_mask[after], self.ends_mask[after], x, mask
        )
        return x, (mask if self.keeps_mask else None), end

    def recurrent(self) -> Recurrent | None:
        return next((m for m in self.layers if isinstance(m, Recurrent)), None)


# -- the wiring, as the schema and the constructor both read it ----------------------------------


def _names(value: Any, key: str) -> list[str]:
    """A node's `inputs` (or the graph's `outputs`) as a list of names."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(key, f"expected a name or a list of names, got {value!r}")


def _node_kind(node: Any, key: str) -> tuple[str, Any]:
    """(kind, its arguments) of a node: a layer kind, a merge, or `layers` (a chain)."""
    if not isinstance(node, Mapping):
        raise ConfigError(
            key,
            f"a node is a mapping such as {{inputs: x, dense: 16}} or {{inputs: [a, b], "
            f"concatenate: {{}}}}, got {node!r}",
        )
    if "inputs" not in node:
        raise ConfigError(f"{key}.inputs", "must be set: the name(s) this node reads")
    kinds = [k for k in node if k not in NODE_KEYS]
    if len(kinds) != 1:
        raise ConfigError(
            key,
            f"a node has `inputs` and one layer kind, merge or `layers` list; got "
            f"{', '.join(map(str, kinds)) or 'none'}",
        )
    kind = str(kinds[0])
    if kind != "layers" and kind not in MERGES and kind not in KINDS:
        close = difflib.get_close_matches(kind, [*MERGES, *KINDS, "layers"], n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ConfigError(
            f"{key}.{kind}",
            f"unknown layer or merge kind {kind!r}; {hint}merges: {', '.join(MERGES)}; a list "
            "of layers: `layers: [...]`; layer kinds: those of model=sequential",
        )
    return kind, node[kind]


def _order(inputs: Mapping[str, Any], layers: Mapping[str, Any], outputs: list[str]) -> list[str]:
    """The nodes in an order where each comes after what it reads; refuses unknown names,
    cycles and nodes that no output needs."""
    if not isinstance(layers, Mapping) or not layers:
        raise ConfigError("model.layers", "must be a mapping of named nodes, e.g. {out: {...}}")
    for name in layers:
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise ConfigError(
                f"model.layers.{name}", "a node's name is a word (letters, digits, _)"
            )
        if name in inputs:
            raise ConfigError(
                f"model.layers.{name}",
                f"{name!r} is also an input's name; give the node another name",
            )
        if hasattr(nn.ModuleDict(), name):
            raise ConfigError(f"model.layers.{name}", f"{name!r} is reserved; choose another name")
    reads, after = {}, {}  # what each node reads; and also needs first (its start state)
    for name, node in layers.items():
        key = f"model.layers.{name}"
        kind, _ = _node_kind(node, key)
        reads[name] = _names(node["inputs"], f"{key}.inputs")
        starts = _starts(node, key)
        after[name] = [*reads[name], *starts]
        if kind not in MERGES and len(reads[name]) != 1:
            raise ConfigError(
                f"{key}.inputs",
                f"a {kind} node reads one input, got {len(reads[name])} ({', '.join(reads[name])}); "
                f"merge them first ({', '.join(MERGES)})",
            )
        for source in after[name]:
            field = "inputs" if source in reads[name] else "initial_state"
            if _base(source) in layers and "." in source:
                continue  # a node's state part (`enc.h`): build_graph checks that it has it
            if source not in inputs and source not in layers:
                close = difflib.get_close_matches(source, [*inputs, *layers], n=3)
                hint = f"did you mean {' or '.join(close)}? " if close else ""
                raise ConfigError(
                    f"{key}.{field}",
                    f"no input or layer named {source!r}; {hint}the inputs are "
                    f"{', '.join(inputs) or 'none'}, the layers {', '.join(layers)}",
                )
    for name in outputs:
        if "." in name and _base(name) in layers:
            continue  # a node's state part (Keras' Model(x, [out, state_h])): checked when built
        if name not in layers and name not in inputs:
            raise ConfigError(
                "model.outputs", f"no layer named {name!r}; the layers are {', '.join(layers)}"
            )
    order: list[str] = []
    state: dict[str, str] = {}  # visiting | done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done" or name in inputs:
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name) :] + [name]
            raise ConfigError(
                f"model.layers.{cycle[-2]}.inputs",
                f"the wiring has a cycle: {' -> '.join(reversed(cycle))}; a layer cannot read "
                "its own output, directly or through others",
            )
        state[name] = "visiting"
        for source in after[name]:
            visit(_base(source), [*path, name])
        state[name] = "done"
        order.append(name)

    for name in layers:  # every node, so a cycle among unused ones is named as a cycle
        visit(name, [])
    needed: set[str] = set()
    stack = [_base(n) for n in outputs if _base(n) in layers]
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack += [_base(s) for s in after[name] if _base(s) in layers]
    for name in layers:
        if name not in needed:
            raise ConfigError(
                f"model.layers.{name}",
                f"no output reads it (outputs: {', '.join(outputs)}); remove it or read it",
            )
    return order


def _base(source: str) -> str:
    """The node or input a source names: `enc` of `enc.h` (a node's state part)."""
    return source.split(".", 1)[0]


def _starts(node: Mapping[str, Any], key: str) -> list[str]:
    """A node's `initial_state`: the names its state starts from (none: its own start)."""
    value = node.get("initial_state")
    return [] if value is None else _names(value, f"{key}.initial_state")


def state_names(node: str, layer: Recurrent) -> list[str]:
    """The names a node of one recurrent layer with return_state gives its final state under,
    in Keras' order: `node.h` (and `node.c` for an LSTM), then `node.h_backward`, ..."""
    directions = ("", BACKWARD) if layer.bidirectional else ("",)
    return [f"{node}.{part}{d}" for d in directions for part in layer.state_parts]


def _initial_state(
    name: str,
    kind: str,
    layer: Recurrent | None,
    given: list[str],
    shapes: dict[str, tuple[int, ...]],
    published: dict[str, list[str]],
) -> list[str]:
    """The names node `name`'s given start state is read from, in Keras' order, checked
    against what its recurrent layer takes: one name of a node with return_state stands for
    that node's whole state."""
    key = f"model.layers.{name}.initial_state"
    if layer is None:
        raise ConfigError(
            key,
            f"only a node of one recurrent layer ({', '.join(RECURRENT)}) starts from a given "
            f"state; this node is {kind!r}: remove initial_state, or give it to a recurrent node",
        )
    if layer.stateful or hasattr(layer, "initial_h"):
        raise ConfigError(
            key,
            "a given start state, but the layer also starts from its own (stateful or "
            "initial_state: learned); keep one of them",
        )
    if len(given) == 1 and given[0] in published:
        given = published[given[0]]
    for source in given:
        if source not in shapes:
            node = _base(source)
            has = ", ".join(published.get(node, [])) or "none (set return_state: true on its layer)"
            raise ConfigError(key, f"no state named {source!r}; the states {node} gives: {has}")
    directions = 2 if layer.bidirectional else 1
    parts = [(f"{p}{BACKWARD if d else ''}", size)
             for d in range(directions) for p, size in layer.state_parts.items()]  # fmt: skip
    takes = ", ".join(f"{p} ({size},)" for p, size in parts)
    got = ", ".join(f"{s} {shapes[s]}" for s in given)
    if len(given) != len(parts) or any(
        shapes[s] != (size,) for s, (_, size) in zip(given, parts, strict=False)
    ):
        fix = (
            f"{given[0]} gives no state: set return_state: true on its recurrent layer"
            if len(given) == 1 and "." not in given[0]
            else f"give {len(parts)} name(s) of those shapes, or one node with return_state: "
            "true of the same layer kind and units"
        )
        raise ConfigError(
            key,
            f"a {kind} layer of {layer.units} units starts from [{takes}] per sample, got "
            f"[{got}]; {fix}",
        )
    return given


def _outputs(outputs: Any) -> tuple[dict[str, str], bool]:
    """{output name: node} and whether the network has one unnamed output (a tensor)."""
    if isinstance(outputs, str):
        return {outputs: outputs}, True
    if isinstance(outputs, Mapping) and outputs:
        bad = [k for k, v in outputs.items() if not isinstance(v, str)]
        if bad:
            raise ConfigError(f"model.outputs.{bad[0]}", "must name a layer")
        return {str(k): v for k, v in outputs.items()}, False
    return {n: n for n in _names(outputs, "model.outputs")}, False


def _merge_shape(mode: str, args: Any, shapes: dict[str, tuple[int, ...]], key: str):
    """A merge's module and output shape, or the refusal naming `key.inputs`."""
    args = {} if args is None else args
    if not isinstance(args, Mapping) or set(args) - ({"axis"} if mode == "concatenate" else set()):
        takes = "axis" if mode == "concatenate" else "no arguments"
        raise ConfigError(f"{key}.{mode}", f"{mode} takes {takes}, got {args!r}")
    listed = ", ".join(f"{n} {s}" for n, s in shapes.items())
    if len(shapes) < 2 or (mode == "subtract" and len(shapes) != 2):
        raise ConfigError(
            f"{key}.inputs",
            f"{mode} merges {'two' if mode == 'subtract' else 'two or more'} inputs, got {listed}",
        )
    first, *rest = shapes.values()
    if mode != "concatenate":
        if any(s != first for s in rest):
            raise ConfigError(
                f"{key}.inputs",
                f"{mode} needs inputs of one shape, got {listed}; make them the same (a dense "
                "layer of the same width), or concatenate them",
            )
        return Merge(mode), first
    axis = args.get("axis", -1)
    rank = len(first)
    if (
        isinstance(axis, bool)
        or not isinstance(axis, int)
        or not (-rank <= axis <= rank)
        or axis == 0
    ):
        raise ConfigError(
            f"{key}.concatenate.axis",
            f"{axis!r} is no axis of these {rank}-D samples: -1 is the last, 1 the first after "
            "the batch (Keras' meaning)",
        )
    dim = axis - 1 if axis > 0 else rank + axis  # the axis within one sample
    if any(len(s) != rank for s in rest) or any(
        s[:dim] + s[dim + 1 :] != first[:dim] + first[dim + 1 :] for s in rest
    ):
        raise ConfigError(
            f"{key}.inputs",
            f"concatenate on axis {axis} needs the other sizes equal, got {listed}; flatten or "
            "pool them first, or concatenate on another axis",
        )
    out = list(first)
    out[dim] = sum(s[dim] for s in shapes.values())
    return Merge(mode, dim + 1), tuple(out)


def _rekey(exc: ConfigError, old: str, new: str) -> ConfigError:
    """A layer list's refusal (`...[0].units`) named as the one-layer node's key."""
    if not exc.key.startswith(old):
        return exc
    key = new + exc.key[len(old) :]
    return ConfigError(key, str(exc)[len(exc.key) + 2 :])


def build_graph(
    inputs: Mapping[str, Sequence[int]],
    layers: Mapping[str, Any],
    outputs: Any,
    output_size: int | Mapping[str, int] | None = None,
    init: str = "torch",
    inner_init: str = "torch",
):
    """(modules by node, reads by node, node order, {output: node}, single, shapes by name)."""
    named, single = _outputs(outputs)
    shapes: dict[str, tuple[int, ...]] = {n: tuple(s) for n, s in inputs.items()}
    order = _order(inputs, layers, list(named.values()))
    if isinstance(output_size, Mapping):
        if set(output_size) != set(named):
            raise ConfigError(
                "model.outputs",
                f"the network's outputs are {', '.join(named)}, the task scores "
                f"{', '.join(output_size)}; one output per scored name, named as the task does",
            )
    if output_size is not None and not isinstance(output_size, Mapping) and not single:
        raise ConfigError(
            "model.outputs",
            f"the network has outputs {', '.join(named)} by name, but the task scores one "
            f"output ({output_size} values per sample); use task=multi_output with one entry "
            "per output, or give the network one output (model.outputs: NODE)",
        )
    widths = {}
    for out_name, node in named.items():
        if isinstance(output_size, Mapping):
            widths.setdefault(node, output_size.get(out_name))
        elif single:
            widths[node] = output_size
    masked: dict[str, bool] = dict.fromkeys(inputs, False)
    modules: dict[str, nn.Module] = {}
    reads: dict[str, list[str]] = {}
    starts: dict[str, list[str]] = {}  # node -> the names its given start state is read from
    published: dict[str, list[str]] = {}  # node -> the names of its final state (return_state)
    for name in order:
        node, key = layers[name], f"model.layers.{name}"
        kind, args = _node_kind(node, key)
        reads[name] = _names(node["inputs"], f"{key}.inputs")
        for source in reads[name]:
            if source not in shapes:  # a state part (`enc.c`) the node does not give
                node_name = _base(source)
                has = ", ".join(published.get(node_name, [])) or (
                    "none (set return_state: true on its recurrent layer)"
                )
                raise ConfigError(
                    f"{key}.inputs",
                    f"no state named {source!r}; the states {node_name} gives: {has}",
                )
        if kind in MERGES:
            modules[name], shapes[name] = _merge_shape(
                kind, args, {s: shapes[s] for s in reads[name]}, key
            )
            masked[name] = False
            continue
        (source,) = reads[name]  # one: _order checked it
        one_recurrent = kind in RECURRENT
        if kind == "layers":
            entries, prefix = args, f"{key}.layers"
            if not isinstance(entries, Sequence) or isinstance(entries, str) or not entries:
                raise ConfigError(prefix, f"expected a list of layers, got {entries!r}")
        else:  # one layer: a list of one, its refusals named `<node>.<kind>`
            entries, prefix = [{kind: args}], key
        try:
            built, chain_shapes, keeps = build_chain(
                entries,
                shapes[source],
                widths.get(name),
                prefix,
                init,
                inner_init,
                masked=masked[source],
                head=name in widths,
                from_input=source in inputs,
                states=one_recurrent,
            )
        except ConfigError as exc:
            raise _rekey(exc, f"{key}[0]", f"{key}.{kind}") from None
        modules[name] = chain = Chain(built, keeps)
        shapes[name] = chain_shapes[-1]
        masked[name] = keeps
        layer = chain.recurrent() if one_recurrent else None
        given = _starts(node, key)
        if given:
            starts[name] = _initial_state(name, kind, layer, given, shapes, published)
        if layer is not None and layer.return_state:
            published[name] = state_names(name, layer)
            for part, size in zip(published[name], [*layer.state_parts.values()] * 2, strict=False):
                shapes[part], masked[part] = (size,), False
    for out_name, node in named.items():
        if node not in shapes:  # a state part the node does not give
            has = ", ".join(published.get(_base(node), [])) or (
                "none (set return_state: true on its recurrent layer)"
            )
            raise ConfigError(
                "model.outputs", f"no state named {node!r}; the states {_base(node)} gives: {has}"
            )
        width = output_size.get(out_name) if isinstance(output_size, Mapping) else output_size
        if width is not None and (single or isinstance(output_size, Mapping)):
            if shapes[node] != (width,):
                raise ConfigError(
                    f"model.layers.{node}",
                    f"output {out_name!r} has shape {shapes[node]}, but the task needs ({width},) "
                    "per sample; end it with `dense` (its width comes from the task)",
                )
    return modules, reads, order, named, single, shapes, starts, published


def check_graph(node: Mapping[str, Any], key: str) -> None:
    """The schema's check of a graph config: each layer's arguments (as model=sequential's
    lists), then the wiring and every shape, by building it (cheap: the weights are only
    allocated), with each refusal naming its key under `key`."""
    layers = node.get("layers")
    if isinstance(layers, Mapping):
        for name, spec in layers.items():
            if not isinstance(spec, Mapping):
                continue
            for kind, args in spec.items():
                if kind == "layers" and isinstance(args, Sequence) and not isinstance(args, str):
                    check_layers(args, f"{key}.layers.{name}.layers")
                elif kind in KINDS:
                    try:
                        check_layers([{kind: args}], f"{key}.layers.{name}", states=True)
                    except ConfigError as exc:
                        prefix = f"{key}.layers.{name}"
                        raise _rekey(exc, f"{prefix}[0]", f"{prefix}.{kind}") from None
    inputs = node.get("inputs")
    if not isinstance(inputs, Mapping):
        return  # the schema's type check names it
    try:
        build_graph(
            inputs,
            layers,
            node.get("outputs"),
            node.get("output_size"),
            node.get("init", "torch"),
            node.get("inner_init", "torch"),
        )
    except ConfigError as exc:
        if key == "model" or not exc.key.startswith("model"):
            raise
        raise ConfigError(key + exc.key[len("model") :], str(exc)[len(exc.key) + 2 :]) from None


class Graph(nn.Module):
    """The nodes of `layers`, wired by name from the data's `inputs` to `outputs` (see the
    module's docstring)."""

    @classmethod
    def schema_check(cls, node: dict, key: str) -> None:
        """nnlab.schema's hook: names, cycles, kinds, arguments and shapes of the wiring."""
        check_graph(node, key)

    def __init__(
        self,
        inputs: Annotated[Mapping[str, Sequence[PositiveInt]], Field(min_length=1)],
        layers: Annotated[Mapping[str, Any], Field(min_length=1)],
        outputs: str | Sequence[str] | Mapping[str, str],
        output_size: PositiveInt | Mapping[str, PositiveInt] | None = None,
        init: Initializer = "torch",
        inner_init: Initializer = "torch",
    ):
        super().__init__()
        self.input_names = list(inputs)
        modules, reads, order, named, single, shapes, starts, published = build_graph(
            inputs, layers, outputs, output_size, init, inner_init
        )
        self.nodes = nn.ModuleDict({name: modules[name] for name in order})
        self.reads, self.order = reads, order
        self.starts, self.published = starts, published
        self.outputs, self.single = named, single
        self.output_names = list(named)
        self.shapes = {name: shapes[name] for name in [*inputs, *order]}
        self.shapes |= {part: shapes[part] for parts in published.values() for part in parts}

    def bind(self, inputs: tuple, named: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{input name: tensor} of a call's positional and keyword inputs, or a ValueError
        naming what is missing, unknown or given twice."""
        names = self.input_names
        if len(inputs) > len(names):
            raise ValueError(
                f"the network takes {len(names)} inputs ({', '.join(names)}), got {len(inputs)}"
            )
        values = dict(zip(names, inputs, strict=False))
        unknown = [n for n in named if n not in names]
        twice = [n for n in named if n in values]
        if unknown or twice:
            what = f"unknown inputs {unknown}" if unknown else f"inputs {twice} given twice"
            raise ValueError(f"{what}; the network's inputs are {', '.join(names)}")
        values.update(named)
        missing = [n for n in names if n not in values]
        if missing:
            raise ValueError(
                f"missing inputs {', '.join(missing)}; the network takes {', '.join(names)} "
                "(by position in that order, or by name)"
            )
        return {n: values[n] for n in names}

    def forward(
        self, *inputs: torch.Tensor | Mapping[str, torch.Tensor], **named: torch.Tensor
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """The inputs in the order of `inputs`, by name (`net(ids=..., multihot=...)`), or as
        one {name: tensor} mapping (Keras' `model({"ids": ..., "multihot": ...})`); positional
        ones first, the rest by name."""
        if len(inputs) == 1 and isinstance(inputs[0], Mapping):
            inputs, named = (), {**inputs[0], **named}
        values: dict[str, torch.Tensor] = self.bind(inputs, named)
        masks: dict[str, torch.Tensor | None] = dict.fromkeys(self.input_names)
        for name in self.order:
            module, sources = self.nodes[name], self.reads[name]
            if isinstance(module, Merge):
                values[name], masks[name] = module(*(values[s] for s in sources)), None
            elif name in self.starts or name in self.published:  # a state given or returned
                initial = [values[s] for s in self.starts[name]] if name in self.starts else None
                x, mask = values[sources[0]], masks.get(sources[0])
                values[name], masks[name], end = module.run(x, mask, initial)
                values.update(zip(self.published.get(name, []), end, strict=False))
            else:
                values[name], masks[name] = module(values[sources[0]], masks.get(sources[0]))
        if self.single:
            return values[next(iter(self.outputs.values()))]
        return {out: values[node] for out, node in self.outputs.items()}
