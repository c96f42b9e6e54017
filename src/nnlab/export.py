"""nnlab-export: a run's network as TorchScript or ONNX, checked against the checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from nnlab.cli import command, load_datamodule, load_task, output_dir, run_config
from nnlab.errors import UserError
from nnlab.runs import EXPORT, Run, write_json
from nnlab.schema import NonNegativeFloat

if TYPE_CHECKING:  # torch is imported where it is used: `nnlab-export --help` answers without it
    import torch


def export_torchscript(net: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path):
    import torch

    traced = torch.jit.trace(net, inputs)
    traced.save(str(path))
    loaded = torch.jit.load(str(path))
    return lambda *xs: loaded(*xs)


def export_onnx(net: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path):
    import torch

    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "format: ONNX export needs the onnx extra; pip install 'nnlab[onnx]' "
            "(onnx, onnxscript, onnxruntime), or use format=torchscript"
        ) from None
    if len(inputs) > 1:
        raise UserError(
            "format: ONNX export of a network with several inputs (token ids and lengths: packed "
            "sequences) is not supported; use format=torchscript"
        )
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        net,
        inputs,
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes={"x": {0: batch}},
        dynamo=True,
        verbose=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def model_inputs(datamodule) -> tuple[torch.Tensor, ...]:
    """A test batch as the network reads it (the data module's `batch_transform`), without its
    targets: ids and lengths for sequences of tokens, float rows for multi-hot ones."""
    batch = datamodule.batch_transform(next(iter(datamodule.test_dataloader())))
    return tuple(batch[:-1])


EXPORTERS = {
    "torchscript": (export_torchscript, "model.torchscript.pt"),
    "onnx": (export_onnx, "model.onnx"),
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
    inputs = model_inputs(load_datamodule(cfg, "test"))
    exporter, filename = EXPORTERS[format]
    path = output_dir(run_dir, out, EXPORT) / filename
    import torch

    with torch.no_grad():
        expected = net(*inputs)
        exported = exporter(net, inputs, path)
        # a different batch size than the traced one: the export must not have baked it in
        n = len(inputs[0])
        halves = [tuple(t[:1] for t in inputs), tuple(t[1:] for t in inputs)] if n > 1 else [inputs]
        got = torch.cat([exported(*half) for half in halves])
    max_diff = (got - expected).abs().max().item()
    record = {
        "format": format,
        "file": str(path),
        "checkpoint": str(ckpt_path),
        "input_shapes": [list(t.shape) for t in inputs],
        "max_abs_diff": max_diff,
        "atol": float(atol),
        "matches": max_diff <= float(atol),
    }
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
