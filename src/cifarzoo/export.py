"""Export a trained model to ONNX, verified against PyTorch, and run such a file.

The exported graph takes **float32 RGB images with values in [0, 255]** — the raw
pixel values, not rescaled to [0, 1] and not normalized — and returns logits
``(batch, num_classes)`` (no softmax). The checkpoint's per-channel mean/std (the
same pair :func:`cifarzoo.data.loader.normalize` uses in training and ``predict``)
is folded into the graph as a subtract and a divide, so a caller never re-implements
the preprocessing and never gets it subtly wrong (the classic /225 vs /255 bug). A
caller holding uint8 images casts them (``images.astype(np.float32)``); values stay
in [0, 255]. The input is float32 rather than uint8 because every ONNX consumer
(ONNX Runtime, TensorRT, OpenCV DNN, onnxruntime-web) takes float32 inputs, while
uint8 graph inputs are patchily supported.

Layout is NCHW ``(batch, 3, 32, 32)`` by default, or NHWC ``(batch, 32, 32, 3)`` —
the layout image decoders produce — with ``layout="nhwc"``. The batch axis is
dynamic. Models with auxiliary heads (Inception) are exported in eval mode, where
they return the main logits only; the graph is checked to have exactly one output.

Everything a consumer needs is in the file's ``metadata_props`` (strings; JSON
where structured): ``format`` = ``"cifarzoo.onnx"``, ``format_version``,
``classes`` (JSON list), ``model_name``, ``model_kwargs`` (JSON), ``normalization``
(JSON ``{"mean": [...], "std": [...]}``, [0, 255] units, already applied inside the
graph), ``layout``, ``input`` (a sentence), ``input_dtype`` = ``"float32"``,
``input_range`` = ``"[0, 255]"``, ``output``, ``epoch``, ``opset``, ``exporter`` and
``cifarzoo_version``.

The file is written to a temp file beside the target, loaded back with ONNX Runtime
and compared with the PyTorch model on a batch of images (and on a batch of one,
which exercises the dynamic batch axis); only when the logits agree within ``atol``
is it renamed into place, atomically. A file that fails the check is deleted, so a
file under the final name has always been verified.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based
exporter, the default since torch 2.9; the TorchScript one is deprecated) at
opset 18, the exporter's native opset (its operator library is written for 18; a
lower request goes through a version converter that can silently keep 18) and one
ONNX Runtime has supported since 1.14. ``exporter="legacy"`` selects the old
TorchScript exporter, an escape hatch for a model the new one cannot capture.

onnx, onnxruntime and onnxscript are an optional extra (``pip install
'cifarzoo[onnx]'``), imported only inside these functions.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifarzoo.errors import CifarzooError
from cifarzoo.io import atomic_file, check_target, open_regular

FORMAT = "cifarzoo.onnx"
FORMAT_VERSION = 1
ONNX_NAME = "model.onnx"
DEFAULT_OPSET = 18
MIN_OPSET = {"dynamo": 18, "legacy": 9}  # below 18 the dynamo exporter's converter is unreliable
LAYOUTS = ("nchw", "nhwc")
EXPORTERS = ("dynamo", "legacy")
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
IMAGE_SIZE = 32  # CIFAR; the exported graph's height and width are fixed
NUM_CHECK_IMAGES = 16
INSTALL_HINT = "pip install 'cifarzoo[onnx]'"


@dataclass(frozen=True)
class ExportResult:
    path: Path  # the verified .onnx file
    max_abs_diff: float  # max |logits_onnxruntime - logits_pytorch| over the check images
    top1_agreement: float  # fraction of check images whose argmax agrees, in [0, 1]
    opset: int  # default-domain opset of the written file
    seconds: float  # wall time of export + verification
    layout: str = "nchw"
    exporter: str = "dynamo"
    num_check_images: int = 0
    model_name: str = ""


def _require(*names: str) -> dict[str, Any]:
    """Import the optional ONNX packages, or say how to install them."""
    import importlib

    mods = {}
    for name in names:
        try:
            mods[name] = importlib.import_module(name)
        except ImportError as exc:
            raise CifarzooError(
                f"ONNX support needs the optional packages onnx, onnxruntime and onnxscript "
                f"({name} is missing: {exc}); install them with: {INSTALL_HINT}"
            ) from None
    return mods


@contextlib.contextmanager
def _quiet_exporter():
    """Keep the exporter's progress lines, log records and deprecation warnings off the
    user's terminal (library functions do not print); errors still raise."""
    names = ("torch.onnx", "torch.export", "torch._export", "torch.fx", "onnxscript")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()):
                yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _to_onnx_proto(wrapper, example, *, opset: int, exporter: str, onnx):
    """Trace ``wrapper`` on ``example`` into an ``onnx.ModelProto`` with a dynamic batch axis."""
    import inspect

    import torch

    if exporter == "dynamo":
        if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
            raise CifarzooError(
                f"torch {torch.__version__} has no dynamo ONNX exporter; upgrade torch (>= 2.6) "
                "or use the legacy exporter (--exporter legacy)"
            )
        batch = torch.export.Dim("batch", min=1)
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
        return program.model_proto
    buf = io.BytesIO()
    torch.onnx.export(
        wrapper,
        (example,),
        buf,
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=opset,
    )
    return onnx.load_model_from_string(buf.getvalue())


def _caused_by_interrupt(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is anywhere in ``exc``'s chain of causes."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _shape_text(shape: list) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _first_line(exc: BaseException, limit: int = 300) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:limit]


def _default_opset(model_proto) -> int:
    for imp in model_proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return -1


def _default_check_images(n: int = NUM_CHECK_IMAGES) -> np.ndarray:
    """Real images when the bundled sample is readable (argmax agreement means more on
    them), else deterministic pseudo-random ones; uint8 ``(n, 32, 32, 3)``."""
    try:
        from cifarzoo import data

        test = data.load("sample", progress=False).test_images
        images = np.asarray(test[:: max(1, len(test) // n)][:n])  # spread over the set (and its classes)
        if images.dtype == np.uint8 and images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3) and len(images):
            return np.ascontiguousarray(images)
    except Exception:  # data layer absent or sample unreadable: the random batch checks the graph as well
        pass
    return np.random.default_rng(0).integers(0, 256, size=(n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


def _check_images_array(images, what: str = "check_images") -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise CifarzooError(
            f"{what} must be uint8 images of shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) (NHWC, RGB, 0-255); "
            f"got dtype {images.dtype} shape {images.shape}"
        )
    return images


def _to_layout(images_uint8_nhwc: np.ndarray, layout: str) -> np.ndarray:
    """uint8 NHWC -> the graph's float32 [0, 255] input in ``layout``."""
    x = images_uint8_nhwc.astype(np.float32)
    if layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def _torch_logits(wrapper, images_uint8_nhwc: np.ndarray, layout: str) -> np.ndarray:
    """The PyTorch side of the comparison: the same wrapper the graph was traced from."""
    import torch

    with torch.no_grad():
        out = wrapper(torch.from_numpy(_to_layout(images_uint8_nhwc, layout)))
    if isinstance(out, (tuple, list)):
        raise CifarzooError(
            f"the model returns {len(out)} outputs in eval mode; an exported classifier must return logits only"
        )
    return out.float().numpy()


def _metadata(ckpt: dict, *, layout: str, opset: int, exporter: str) -> dict[str, str]:
    from cifarzoo import __version__

    shape = "(batch, 3, 32, 32)" if layout == "nchw" else "(batch, 32, 32, 3)"
    norm = ckpt["normalization"]
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "classes": json.dumps(list(ckpt["classes"]), ensure_ascii=False),
        "model_name": str(ckpt["model"]["name"]),
        "model_kwargs": json.dumps(ckpt["model"].get("kwargs", {})),
        "normalization": json.dumps({"mean": [float(v) for v in norm["mean"]], "std": [float(v) for v in norm["std"]]}),
        "layout": layout,
        "input": (
            f"float32 RGB images {shape}, values in [0, 255] (cast uint8 pixels to float32; "
            "do not rescale or normalize: the normalization is inside the graph)"
        ),
        "input_dtype": "float32",
        "input_range": "[0, 255]",
        "output": "logits (batch, num_classes), no softmax",
        "epoch": str(ckpt.get("epoch", "")),
        "opset": str(opset),
        "exporter": exporter,
        "cifarzoo_version": __version__,
    }


def export_onnx(
    run_or_checkpoint: str | os.PathLike,
    out: str | os.PathLike | None = None,
    opset: int | None = None,
    layout: str = "nchw",
    atol: float = 1e-4,
    check_images: np.ndarray | None = None,
    *,
    exporter: str = "dynamo",
) -> ExportResult:
    """Export a run's (or checkpoint's) model to a verified ONNX file.

    The graph takes float32 RGB images in [0, 255] (uint8 pixels cast to float32, not
    rescaled or normalized), NCHW ``(B, 3, 32, 32)`` or, with ``layout="nhwc"``, NHWC
    ``(B, 32, 32, 3)``; it returns logits ``(B, num_classes)``; ``B`` is dynamic.

    ``out`` defaults to ``model.onnx`` in the run folder (the checkpoint's folder).
    ``opset`` defaults to 18. ``check_images`` (uint8 ``(N, 32, 32, 3)``) defaults to
    16 test images of the bundled sample, or deterministic random images. The file is
    renamed into place only if ONNX Runtime's logits match PyTorch's within ``atol``;
    otherwise it is deleted and :class:`CifarzooError` is raised.
    """
    started = time.perf_counter()
    layout, opset, images, mods = _check_arguments(layout, exporter, atol, opset, check_images)
    model, ckpt, target, mean, std = _load_for_export(run_or_checkpoint, out)
    name = str(ckpt["model"]["name"])
    from cifarzoo.inference import ImageClassifier

    wrapper = ImageClassifier(model, mean, std, layout).eval()
    # The reference comes first, so that an exporter which changed the module in
    # passing (a buffer, a cache, train/eval mode) shows up as a mismatch.
    ref = _torch_logits(wrapper, images, layout)  # (N, num_classes)
    proto = _export_proto(wrapper, images, name, ckpt, layout=layout, opset=opset, exporter=exporter,
                          onnx=mods["onnx"])
    got_opset = _default_opset(proto)
    diff, top1 = _verify_and_write(proto, target, images, ref, name, atol=atol, opset=got_opset,
                                   ort_version=mods["onnxruntime"].__version__)
    return ExportResult(
        path=target,
        max_abs_diff=diff,
        top1_agreement=top1,
        opset=got_opset,
        seconds=time.perf_counter() - started,
        layout=layout,
        exporter=exporter,
        num_check_images=len(images),
        model_name=name,
    )


def _check_arguments(layout, exporter: str, atol, opset, check_images):
    """(layout, opset, check images, the onnx modules) once every argument is valid."""
    layout = str(layout).lower()
    if layout not in LAYOUTS:
        raise CifarzooError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if exporter not in EXPORTERS:
        raise CifarzooError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if not (isinstance(atol, (int, float)) and np.isfinite(atol) and atol >= 0):
        raise CifarzooError(f"atol must be a finite number >= 0, got {atol!r}")
    mods = _require("onnx", "onnxruntime", *(("onnxscript",) if exporter == "dynamo" else ()))
    onnx = mods["onnx"]
    opset = DEFAULT_OPSET if opset is None else opset
    max_opset = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET[exporter] <= opset <= max_opset:
        raise CifarzooError(
            f"opset {opset!r} is not supported by the {exporter} exporter; use {MIN_OPSET[exporter]}..{max_opset} "
            f"(default {DEFAULT_OPSET})"
            + ("; for an older opset try --exporter legacy" if exporter == "dynamo" else "")
        )
    images = _default_check_images() if check_images is None else _check_images_array(check_images)
    if len(images) == 0:
        raise CifarzooError("check_images is empty; give at least one image")
    return layout, opset, images, mods


def _load_for_export(run_or_checkpoint, out):
    """(model, checkpoint, target path, mean, std) for a run folder or checkpoint."""
    from cifarzoo.train.checkpoint import load_model

    model, ckpt = load_model(run_or_checkpoint)
    ckpt_path = Path(ckpt["path"])
    target = Path(out) if out is not None else ckpt_path.parent / ONNX_NAME
    if target.is_dir() and not target.is_symlink():
        target = target / ONNX_NAME
    check_target(target)  # before the export's work: a link or special file is never written through
    if target.resolve() == ckpt_path.resolve():
        raise CifarzooError(f"--out {target} is the checkpoint itself; choose another file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=target.parent)  # writable? (before the export's work)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CifarzooError(f"cannot write {target} ({exc.strerror or exc}); give --out FILE.onnx in a folder "
                            "you can write to") from None
    norm = ckpt["normalization"]
    try:
        mean, std = [float(v) for v in norm["mean"]], [float(v) for v in norm["std"]]
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise CifarzooError(
            f"{ckpt_path}: normalization must be {{'mean': [r, g, b], 'std': [r, g, b]}} with std > 0, got {norm!r}"
        ) from None
    return model, ckpt, target, mean, std


def _export_proto(wrapper, images, name: str, ckpt: dict, *, layout: str, opset: int, exporter: str, onnx):
    """The checked ONNX model of ``wrapper`` with cifarzoo's metadata."""
    import torch

    # An example batch of 2, not 1: torch.export specializes size-1 dimensions.
    example = torch.from_numpy(_to_layout(images[:1].repeat(2, axis=0), layout))
    try:
        with _quiet_exporter():
            proto = _to_onnx_proto(wrapper, example, opset=opset, exporter=exporter, onnx=onnx)
    except CifarzooError:
        raise
    except Exception as exc:
        if _caused_by_interrupt(exc):  # the exporter wraps a Ctrl-C in its own error: not its failure
            raise KeyboardInterrupt from None
        other = "legacy" if exporter == "dynamo" else "dynamo"
        hint = (
            f"try the default --opset {DEFAULT_OPSET}"
            if opset != DEFAULT_OPSET
            else f"try --exporter {other}, or report this as a bug"
        )
        raise CifarzooError(
            f"the {exporter} ONNX exporter failed on model {name!r} at opset {opset} "
            f"({type(exc).__name__}: {_first_line(exc)}); {hint}"
        ) from exc

    got_opset = _default_opset(proto)
    if got_opset != opset:
        raise CifarzooError(
            f"asked for opset {opset} but the {exporter} exporter produced opset {got_opset}; "
            f"use --opset {got_opset}"
        )
    if len(proto.graph.output) != 1 or len(proto.graph.input) != 1:
        raise CifarzooError(
            f"the exported graph of {name!r} has {len(proto.graph.input)} inputs and "
            f"{len(proto.graph.output)} outputs; expected one image input and one logits output "
            "(auxiliary heads must be off in eval mode)"
        )
    for node in proto.graph.node:
        # The dynamo exporter annotates every node with the Python stack that made it:
        # absolute source paths of this machine, a third of a small file's bytes.
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.metadata_props[:]
    for key, value in _metadata(ckpt, layout=layout, opset=got_opset, exporter=exporter).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"cifarzoo {name}: float32 RGB [0, 255] {layout.upper()} images -> logits"
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise CifarzooError(f"the exported graph of {name!r} is not valid ONNX ({exc}); report this as a bug") from exc

    return proto


def _verify_and_write(proto, target: Path, images, ref, name: str, *, atol: float, opset: int,
                      ort_version: str) -> tuple[float, float]:
    """Write ``proto`` to ``target`` only if ONNX Runtime's logits match ``ref``; (max abs diff, top-1 agreement)."""
    # Renamed into place only once ONNX Runtime's logits match; deleted otherwise.
    with atomic_file(target) as (f, tmp):
        f.write(proto.SerializeToString())
        f.flush()
        try:
            session = OnnxClassifier(tmp, threads=1)  # a handful of images: threads would only spin
        except CifarzooError as exc:
            cause = exc.__cause__ or exc
            raise CifarzooError(
                f"ONNX Runtime {ort_version} cannot load the exported {name!r} at opset "
                f"{opset} ({type(cause).__name__}: {_first_line(cause)}); try --opset {DEFAULT_OPSET}"
            ) from exc
        got = session.predict_logits(images)
        single = session.predict_logits(images[:1])  # batch of one: the dynamic axis works both ways
        if got.shape != ref.shape or single.shape != ref[:1].shape:
            raise CifarzooError(
                f"ONNX Runtime returned logits of shape {got.shape} (and {single.shape} for one image); "
                f"PyTorch returned {ref.shape}"
            )
        if not (np.isfinite(ref).all() and np.isfinite(got).all() and np.isfinite(single).all()):
            raise CifarzooError("non-finite logits while checking the export (NaN or inf in the model's weights?)")
        diff = float(max(np.abs(got - ref).max(), np.abs(single - ref[:1]).max()))
        top1 = float((got.argmax(1) == ref.argmax(1)).mean())
        if not diff <= atol:
            scale = float(np.abs(ref).max())
            hint = (
                f"the logits are as large as {scale:.3g}, so this is float32 rounding "
                f"(relative difference {diff / scale:.1g}; an untrained model in eval mode?): raise --atol"
                if diff <= 1e-5 * scale
                else "try another --opset or --exporter, or raise --atol if the difference is acceptable"
            )
            raise CifarzooError(
                f"exported {name!r} disagrees with PyTorch: max abs logit difference {diff:.3g} > atol {atol:g} "
                f"(top-1 agreement {top1:.1%} on {len(images)} images); nothing written to {target}; {hint}"
            )
        del session
    return diff, top1


class OnnxClassifier:
    """An ONNX file written by :func:`export_onnx`, run with ONNX Runtime on the CPU.

    ``OnnxClassifier(path).predict_logits(images)`` takes uint8 RGB images
    ``(B, 32, 32, 3)`` (NHWC, as decoders and the Dataset hold them) and does the
    dtype/layout conversion the file's metadata asks for; normalization is inside
    the graph. Attributes: ``classes``, ``model_name``, ``layout``,
    ``normalization``, ``metadata`` (all metadata_props), ``path``. ``providers``
    defaults to ONNX Runtime's CPU provider; ``threads`` caps its intra-op threads.
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None):
        ort = _require("onnxruntime")["onnxruntime"]
        self.path = Path(path)
        if not self.path.exists():
            raise CifarzooError(f"{self.path}: no such ONNX file")
        open_regular(self.path).close()  # a FIFO would block ONNX Runtime forever
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self._session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise CifarzooError(
                f"{self.path}: not a readable ONNX model, corrupt or truncated "
                f"({type(exc).__name__}: {_first_line(exc, 200)}); re-export it with `cifarzoo export`"
            ) from exc
        meta = dict(self._session.get_modelmeta().custom_metadata_map)
        self.metadata = meta
        if meta.get("format") != FORMAT:
            raise CifarzooError(
                f"{self.path}: an ONNX model but not one exported by cifarzoo (no metadata format={FORMAT!r}); "
                "export it with `cifarzoo export RUN`"
            )
        try:
            self.classes = [str(c) for c in json.loads(meta["classes"])]
            self.model_name = meta["model_name"]
            self.layout = meta["layout"]
            self.normalization = json.loads(meta.get("normalization", "null"))
        except (KeyError, ValueError, TypeError) as exc:
            raise CifarzooError(f"{self.path}: cifarzoo metadata is incomplete or malformed ({exc!r})") from None
        if self.layout not in LAYOUTS:
            raise CifarzooError(f"{self.path}: metadata layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise CifarzooError(
                f"{self.path}: expected one input and one output, found {len(inputs)} and {len(outputs)}"
            )
        self._input = inputs[0].name
        if inputs[0].type != "tensor(float)":
            raise CifarzooError(f"{self.path}: input type {inputs[0].type}, expected tensor(float)")
        self._hw = self._check_shapes(inputs[0].shape, outputs[0].shape)

    def _check_shapes(self, shape_in: list, shape_out: list) -> tuple:
        """The (height, width) of the input ``(B, 3, H, W)`` (nchw) or ``(B, H, W, 3)`` (nhwc), as
        :func:`export_onnx` writes it; a graph of another rank, channel count or output width is refused
        here rather than by an IndexError in the middle of ``predict``. Symbolic sizes are checked per batch."""
        expected = "(batch, 3, 32, 32)" if self.layout == "nchw" else "(batch, 32, 32, 3)"
        channels = shape_in[1] if self.layout == "nchw" and len(shape_in) == 4 else shape_in[-1]
        if len(shape_in) != 4 or (isinstance(channels, int) and channels != 3):
            raise CifarzooError(f"{self.path}: the graph's input has shape {_shape_text(shape_in)}; a cifarzoo "
                                f"model in layout {self.layout} takes {expected}")
        n_out = shape_out[-1] if shape_out else None
        if len(shape_out) != 2 or (isinstance(n_out, int) and n_out != len(self.classes)):
            raise CifarzooError(f"{self.path}: the graph's output has shape {_shape_text(shape_out)}; with the "
                                f"{len(self.classes)} classes of its metadata it must be (batch, {len(self.classes)})")
        return tuple(shape_in[2:4] if self.layout == "nchw" else shape_in[1:3])

    def __repr__(self) -> str:
        return f"OnnxClassifier({str(self.path)!r}, model={self.model_name!r}, layout={self.layout!r})"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``(B, H, W, 3)`` RGB images -> float32 logits ``(B, num_classes)``."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise CifarzooError(
                f"predict_logits takes uint8 RGB images of shape (B, H, W, 3); got dtype {images.dtype} "
                f"shape {images.shape}"
            )
        hw = images.shape[1:3]
        if all(isinstance(d, int) for d in self._hw) and hw != self._hw:
            raise CifarzooError(
                f"{self.path}: the model takes {self._hw[0]}x{self._hw[1]} images, got {hw[0]}x{hw[1]}"
            )
        if len(images) == 0:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        try:
            (logits,) = self._session.run(None, {self._input: _to_layout(images, self.layout)})
        except Exception as exc:  # onnxruntime's own exception types: a graph that does not run on these images
            raise CifarzooError(f"{self.path}: the graph fails on {len(images)} images of shape "
                                f"{images.shape[1:]} ({type(exc).__name__}: {_first_line(exc, 200)})") from None
        logits = np.asarray(logits, dtype=np.float32)
        if logits.shape != (len(images), self.num_classes):
            raise CifarzooError(f"{self.path}: the graph gave logits of shape {logits.shape} for {len(images)} "
                                f"images; with {self.num_classes} classes they must be ({len(images)}, "
                                f"{self.num_classes})")
        return logits
