"""nnlab-export: a run's network as TorchScript or ONNX, checked against the checkpoint."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nnlab.cli import command, load_datamodule, load_task, output_dir, run_config
from nnlab.errors import UserError
from nnlab.runs import EXPORT, Run, write_json
from nnlab.schema import NonNegativeFloat

if TYPE_CHECKING:  # torch is imported where it is used: `nnlab-export --help` answers without it
    import torch

    Outputs = dict[str, torch.Tensor]


def named_outputs(out) -> Outputs:
    """A network's output(s) by name: {name: tensor} of model=graph's several outputs, else
    {"output": tensor}."""
    if isinstance(out, Mapping):
        return {str(k): v for k, v in out.items()}
    if isinstance(out, tuple | list):
        return {f"output_{i + 1}": v for i, v in enumerate(out)}
    return {"output": out}


def export_torchscript(net: torch.nn.Module, inputs: tuple[torch.Tensor, ...], names, path: Path):
    import torch

    # strict=False: a graph's outputs come as a dict of tensors
    traced = torch.jit.trace(net, inputs, strict=False)
    traced.save(str(path))
    loaded = torch.jit.load(str(path))
    return lambda *xs: named_outputs(loaded(*xs))


def export_onnx(net: torch.nn.Module, inputs: tuple[torch.Tensor, ...], names, path: Path):
    """ONNX with one named input per network input (the data's names: `input`, or model=graph's
    `ids`, `multihot`, ...) and one named output per output, the batch size left free. The
    dynamo exporter first; packed sequences (token ids with their lengths, read by torch's
    recurrent layers) are exported by torch's TorchScript-based exporter, which maps them to
    ONNX's recurrent operators with sequence lengths."""
    import torch

    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "format: ONNX export needs the onnx extra; pip install 'nnlab[onnx]' "
            "(onnx, onnxscript, onnxruntime), or use format=torchscript"
        ) from None
    outputs = list(named_outputs(net(*inputs)))
    batch = torch.export.Dim("batch", min=1)
    names_of = {"input_names": list(names), "output_names": outputs}
    try:
        torch.onnx.export(
            net,
            inputs,
            str(path),
            dynamic_shapes=batch_axes(net, len(inputs), batch),
            dynamo=True,
            verbose=False,
            **names_of,
        )
    except Exception as dynamo_error:  # noqa: BLE001 - torch.export refuses in many ways
        try:  # torch's TorchScript-based exporter (packed sequences: ids with lengths)
            torch.onnx.export(
                net,
                inputs,
                str(path),
                dynamic_axes={n: {0: "batch"} for n in [*names, *outputs]},
                dynamo=False,
                **names_of,
            )
        except Exception:  # noqa: BLE001 - the first refusal says more
            first = str(dynamo_error).strip().splitlines()[0] if str(dynamo_error) else ""
            raise UserError(
                f"format: torch cannot export {type(net).__name__} to ONNX "
                f"({type(dynamo_error).__name__}: {first}); use format=torchscript"
            ) from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = [i.name for i in session.get_inputs()]  # an input the network never reads is dropped

    def run(*xs: torch.Tensor) -> Outputs:
        feed = {n: x.numpy() for n, x in zip(names, xs, strict=True) if n in wanted}
        values = session.run(outputs, feed)
        return {n: torch.from_numpy(v) for n, v in zip(outputs, values, strict=True)}

    return run


def batch_axes(net: torch.nn.Module, count: int, batch) -> dict[str, Any]:
    """torch.export's dynamic shapes of `count` inputs, by the forward's parameter names (x,
    ids, lengths, ...; a graph's `*inputs` as one tuple): axis 0 of each is the batch."""
    axes: dict[str, Any] = {}
    left = count
    for name, p in inspect.signature(net.forward).parameters.items():
        if left == 0:
            break
        if p.kind == p.VAR_POSITIONAL:
            axes[name] = tuple({0: batch} for _ in range(left))
            break
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            axes[name], left = {0: batch}, left - 1
    return axes


def model_inputs(datamodule) -> tuple[torch.Tensor, ...]:
    """A test batch as the network reads it (the data module's `batch_transform`), without its
    targets (one, or `target_names`' several): ids and lengths for sequences of tokens, float
    rows for multi-hot ones."""
    from nnlab.data.base import batch_names

    batch = datamodule.batch_transform(next(iter(datamodule.test_dataloader())))
    _, targets = batch_names(datamodule)
    return tuple(batch[: -len(targets or [None])])


EXPORTERS = {
    "torchscript": (export_torchscript, "model.torchscript.pt"),
    "onnx": (export_onnx, "model.onnx"),
}


def export_network(
    net: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    names,
    format: str,
    path: Path,  # noqa: A002
) -> dict[str, Any]:
    """Write `net` (in eval mode) to `path` in `format` and run the file on `inputs` split into
    two batches of other sizes than the traced one (the export must not have baked the batch
    size in): the inputs' and outputs' names and shapes and the largest difference from the
    network's own outputs."""
    import torch

    with torch.no_grad():
        expected = named_outputs(net(*inputs))
        exported = EXPORTERS[format][0](net, inputs, names, path)
        n = len(inputs[0])
        halves = [tuple(t[:1] for t in inputs), tuple(t[1:] for t in inputs)] if n > 1 else [inputs]
        parts = [exported(*half) for half in halves]
        got = {k: torch.cat([p[k] for p in parts]) for k in expected}
    return {
        "inputs": {n: list(t.shape) for n, t in zip(names, inputs, strict=True)},
        "input_shapes": [list(t.shape) for t in inputs],
        "outputs": {n: list(t.shape) for n, t in expected.items()},
        "max_abs_diff": max((got[k] - expected[k]).abs().max().item() for k in expected),
    }


# The arguments' types are their declaration (checked before anything runs); their defaults and
# meanings are in conf/export.yaml (what --help prints).
@command("export")
def main(
    run: str | None,
    format: Literal["torchscript", "onnx"],  # noqa: A002 (the CLI's word)
    ckpt: str,
    out: str | None,
    atol: NonNegativeFloat,
    overrides: list[str],
) -> Path:
    run_dir = Run.open(run)
    cfg = run_config(run_dir, overrides)
    task, ckpt_path = load_task(run_dir, cfg, ckpt)
    net = task.net.eval()
    from nnlab.data.base import batch_names

    datamodule = load_datamodule(cfg, "test")
    inputs = model_inputs(datamodule)
    # a graph's inputs by its own names (model.inputs), another network's by the data's
    names = list(getattr(net, "input_names", None) or batch_names(datamodule)[0])
    path = output_dir(run_dir, out, EXPORT) / EXPORTERS[format][1]
    record = {
        "format": format,
        "file": str(path),
        "checkpoint": str(ckpt_path),
        **export_network(net, inputs, names, format, path),
    }
    record["atol"] = float(atol)
    record["matches"] = record["max_abs_diff"] <= float(atol)
    max_diff = record["max_abs_diff"]
    write_json(path.parent / "export.json", record)
    if not record["matches"]:
        raise UserError(
            f"format: the {format} export differs from the checkpoint by {max_diff:.3g} > atol {atol}"
        )
    print(
        f"Wrote {path} (max |exported - checkpoint| = {max_diff:.2e} on {len(inputs[0])} test inputs)"
    )
    return path


if __name__ == "__main__":
    main()
