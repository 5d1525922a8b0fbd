"""``cifarzoo export RUN_OR_CHECKPOINT``: write a verified ONNX file (see :mod:`cifarzoo.export`)."""
from __future__ import annotations

import argparse

DESCRIPTION = """\
Export a trained model to ONNX with the normalization folded into the graph.

The graph's input is float32 RGB images with values in [0, 255]: cast uint8 pixels
to float32, do not rescale to [0, 1] and do not normalize. Shape (batch, 3, 32, 32)
with --layout nchw (default) or (batch, 32, 32, 3) with --layout nhwc; the batch axis
is dynamic. The output is logits (batch, num_classes), no softmax. Class names, model
name, normalization, layout and cifarzoo version are stored in the file's metadata.

The file is checked against PyTorch with ONNX Runtime before it is moved into place;
a file that disagrees beyond --atol is deleted. Needs: pip install 'cifarzoo[onnx]'.
"""


def register(subparsers) -> argparse.ArgumentParser:
    from cifarzoo.export import DEFAULT_OPSET, EXPORTERS, LAYOUTS, ONNX_NAME

    p = subparsers.add_parser(
        "export",
        help="export a run to a verified ONNX file (float32 [0,255] image input)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="a run folder (with checkpoint.pt) or a checkpoint file")
    p.add_argument("--out", metavar="FILE.onnx", default=None, help=f"output file (default: RUN/{ONNX_NAME})")
    p.add_argument("--opset", type=int, default=None, metavar="N", help=f"ONNX opset (default: {DEFAULT_OPSET})")
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="nchw",
        help="input layout: nchw = (batch, 3, 32, 32) (default), nhwc = (batch, 32, 32, 3)",
    )
    p.add_argument(
        "--atol",
        type=float,
        default=1e-4,
        help="largest accepted |logit difference| between ONNX Runtime and PyTorch (default: 1e-4)",
    )
    p.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="dynamo",
        help="torch.onnx exporter: dynamo (default, torch.export-based) or legacy (TorchScript)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from cifarzoo.export import export_onnx

    result = export_onnx(
        args.run, out=args.out, opset=args.opset, layout=args.layout, atol=args.atol, exporter=args.exporter
    )
    n = result.num_check_images
    agree = round(result.top1_agreement * n)
    print(
        f"exported {result.model_name} -> {result.path} "
        f"(input float32 [0,255] {result.layout.upper()}, opset {result.opset}, {result.exporter} exporter, "
        f"{result.seconds:.1f} s)"
    )
    print(
        f"verified with ONNX Runtime on {n} images: max abs diff {result.max_abs_diff:.3g} "
        f"(atol {args.atol:g}), top-1 agreement {result.top1_agreement:.1%} ({agree}/{n})"
    )
    return 0
