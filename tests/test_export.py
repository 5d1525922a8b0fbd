"""ONNX export: every registered model exports, and ONNX Runtime agrees with PyTorch.

The PyTorch reference here is computed independently of the export code, the way
training and ``predict`` compute it: ``data.loader.normalize`` on uint8 NHWC images,
then the model. Models are built at width 0.125 with "trained-looking" weights (random
BN affine parameters, BN statistics gathered on a batch, default-initialised linear
layers) so that the logits are O(0.1-1) and an absolute tolerance of 1e-4 means
something; a freshly initialised model in eval mode has logits from 1e-4 (VGG) to 1e4
(Xception), which would make the check vacuous or fail it on float rounding alone.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import cifarzoo  # noqa: E402
from cifarzoo import export, models  # noqa: E402
from cifarzoo.cli import main  # noqa: E402
from cifarzoo.data.loader import normalize  # noqa: E402
from cifarzoo.errors import CifarzooError  # noqa: E402
from cifarzoo.export import OnnxClassifier, export_onnx  # noqa: E402
from cifarzoo.train.checkpoint import save_checkpoint  # noqa: E402

WIDTH = 0.125
ATOL = 1e-4
# Names that would break naive metadata encodings: spaces, quotes, commas, non-ASCII.
CLASSES = ["airplane", "auto mobile", 'bird "b"', "cat,dog", "deer", "dög", "frog", "horse", "ship", "truck/lorry"]
MEAN = [125.3, 123.0, 113.9]  # [0, 255] units, as in a checkpoint
STD = [63.0, 62.1, 66.7]
MODEL_KWARGS = {"inception": {"aux_logits": True}}  # export must drop the auxiliary heads


def images(n: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, 32, 32, 3) NHWC."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def reference_logits(model: nn.Module, imgs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(normalize(imgs, MEAN, STD)).numpy()


def _trained_looking(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
            if m.weight is not None:  # fastnet's BN has a shift but no scale
                nn.init.uniform_(m.weight, 0.5, 1.5)
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.2, 0.2)
        elif isinstance(m, nn.Linear):
            m.reset_parameters()
    model.train()
    with torch.no_grad():
        model(normalize(images(16, seed=99), MEAN, STD))
    return model.eval()


def make_run(folder: Path, name: str) -> SimpleNamespace:
    """A run folder with a checkpoint.pt as training writes it; returns the model too."""
    kwargs = {"num_classes": len(CLASSES), "width_mult": WIDTH, **MODEL_KWARGS.get(name, {})}
    model = _trained_looking(models.create(name, **kwargs))
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "checkpoint.pt", {
        "model": {"name": name, "kwargs": kwargs},
        "classes": CLASSES,
        "normalization": {"mean": MEAN, "std": STD},
        "state_dict": model.state_dict(),
        "config": {}, "metrics": [], "epoch": 0, "finished": True,
    })
    return SimpleNamespace(name=name, dir=folder, model=model)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: one thread is faster, and on a shared 2-core machine
    two threads spin against each other (a 16-image forward went from 0.1 s to 1.7 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=models.list_models())
def exported(request, tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp(request.param), request.param)
    result = export_onnx(run.dir, check_images=images(4, seed=1))  # default out, opset, layout, exporter
    return SimpleNamespace(run=run, result=result)


@pytest.fixture(scope="module")
def fastnet_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("fastnet_run"), "fastnet")


@pytest.fixture(scope="module")
def legacy_onnx(fastnet_run, tmp_path_factory):
    """fastnet through the legacy TorchScript exporter (fast; also covers that path)."""
    out = tmp_path_factory.mktemp("legacy") / "fastnet.onnx"
    ckpt_file = fastnet_run.dir / "checkpoint.pt"  # a checkpoint file works as well as its run folder
    return export_onnx(ckpt_file, out=out, exporter="legacy", check_images=images(4, seed=2))


# --- every registered model -------------------------------------------------------


def test_export_matches_pytorch(exported):
    run, result = exported.run, exported.result
    assert result.path == run.dir / "model.onnx" and result.path.is_file()
    assert 0 <= result.max_abs_diff <= ATOL
    assert result.top1_agreement == 1.0
    assert result.opset == export.DEFAULT_OPSET and result.exporter == "dynamo"
    assert not [p for p in run.dir.iterdir() if p.name.endswith(".tmp")]

    proto = onnx.load(str(result.path))
    assert len(proto.graph.input) == 1 and len(proto.graph.output) == 1  # no aux heads
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")  # dynamic batch
    assert [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    clf = OnnxClassifier(result.path)
    for batch in (1, 7):
        imgs = images(batch, seed=10 + batch)
        ref = reference_logits(run.model, imgs)
        got = clf.predict_logits(imgs)
        assert got.shape == (batch, len(CLASSES)) and got.dtype == np.float32
        assert np.abs(ref).max() > 1e-2  # the comparison is not vacuous
        np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL)

    # The file's contract without cifarzoo: float32 [0, 255] NCHW in, logits out.
    imgs = images(7, seed=20)
    sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (raw,) = sess.run(None, {sess.get_inputs()[0].name: imgs.astype(np.float32).transpose(0, 3, 1, 2)})
    np.testing.assert_allclose(raw, reference_logits(run.model, imgs), rtol=0, atol=ATOL)


def test_metadata_round_trip(exported):
    run, result = exported.run, exported.result
    clf = OnnxClassifier(result.path)
    assert clf.classes == CLASSES
    assert clf.model_name == run.name
    assert clf.layout == "nchw"
    assert clf.normalization == {"mean": MEAN, "std": STD}
    meta = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert json.loads(meta["classes"]) == CLASSES
    assert meta["format"] == "cifarzoo.onnx"
    assert meta["cifarzoo_version"] == cifarzoo.__version__
    assert meta["input_dtype"] == "float32" and meta["input_range"] == "[0, 255]"
    assert json.loads(meta["model_kwargs"])["width_mult"] == WIDTH
    assert meta["opset"] == str(result.opset)


# --- layouts, exporters, CLI --------------------------------------------------------


def test_cli_export_nhwc(fastnet_run, tmp_path, capsys):
    out = tmp_path / "sub" / "fastnet_nhwc.onnx"
    assert main(["export", str(fastnet_run.dir), "--out", str(out), "--layout", "nhwc"]) == 0
    printed = capsys.readouterr().out
    assert "max abs diff" in printed and str(out) in printed and "top-1 agreement" in printed
    assert out.is_file() and not (fastnet_run.dir / "model.onnx").exists()

    proto = onnx.load(str(out))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [32, 32, 3]
    clf = OnnxClassifier(out)
    assert clf.layout == "nhwc"
    for batch in (1, 7):
        imgs = images(batch, seed=30 + batch)
        ref = reference_logits(fastnet_run.model, imgs)
        np.testing.assert_allclose(clf.predict_logits(imgs), ref, rtol=0, atol=ATOL)
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        (raw,) = sess.run(None, {sess.get_inputs()[0].name: imgs.astype(np.float32)})  # NHWC as decoded
        np.testing.assert_allclose(raw, ref, rtol=0, atol=ATOL)


def test_legacy_exporter(fastnet_run, legacy_onnx):
    assert legacy_onnx.max_abs_diff <= ATOL and legacy_onnx.exporter == "legacy"
    clf = OnnxClassifier(legacy_onnx.path)
    assert clf.metadata["exporter"] == "legacy" and clf.classes == CLASSES
    for batch in (1, 7):
        imgs = images(batch, seed=40 + batch)
        np.testing.assert_allclose(clf.predict_logits(imgs), reference_logits(fastnet_run.model, imgs),
                                   rtol=0, atol=ATOL)


def test_cli_error_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "no_such_run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no_such_run" in err


# --- failures -----------------------------------------------------------------------


def test_mismatch_leaves_no_file(fastnet_run, tmp_path, monkeypatch):
    real = export._torch_logits
    monkeypatch.setattr(export, "_torch_logits", lambda *a, **k: real(*a, **k) + 1e-3)
    target = tmp_path / "bad.onnx"
    with pytest.raises(CifarzooError, match="disagrees with PyTorch"):
        export_onnx(fastnet_run.dir, out=target, exporter="legacy", check_images=images(4))
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # the temp file went too

    target.write_bytes(b"previous good export")  # a failed export never replaces it
    with pytest.raises(CifarzooError, match="disagrees with PyTorch"):
        export_onnx(fastnet_run.dir, out=target, exporter="legacy", check_images=images(4))
    assert target.read_bytes() == b"previous good export"
    assert [p.name for p in tmp_path.iterdir()] == ["bad.onnx"]


def test_runtime_that_cannot_load_the_graph_leaves_no_file(fastnet_run, tmp_path, monkeypatch):
    def refuse(path, *a, **k):
        raise CifarzooError(f"{path}: not a readable ONNX model") from RuntimeError("opset 99 unsupported")

    monkeypatch.setattr(export, "OnnxClassifier", refuse)
    with pytest.raises(CifarzooError, match="ONNX Runtime .* cannot load .*opset 99 unsupported"):
        export_onnx(fastnet_run.dir, out=tmp_path / "x.onnx", exporter="legacy", check_images=images(2))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, match", [
    ({"atol": -1.0}, "atol"),
    ({"layout": "chw"}, "layout"),
    ({"opset": 11}, "opset 11"),
    ({"exporter": "tflite"}, "exporter"),
    ({"check_images": np.zeros((2, 32, 32, 3), dtype=np.float32)}, "uint8"),
])
def test_bad_arguments(fastnet_run, tmp_path, kwargs, match):
    with pytest.raises(CifarzooError, match=match):
        export_onnx(fastnet_run.dir, out=tmp_path / "x.onnx", **kwargs)
    assert not (tmp_path / "x.onnx").exists()


def test_unreadable_files_name_the_file(legacy_onnx, tmp_path):
    good = legacy_onnx.path.read_bytes()
    cases = {
        "random.onnx": np.random.default_rng(0).bytes(4096),
        "truncated.onnx": good[: len(good) // 2],
        "empty.onnx": b"",
        "text.onnx": b"this is not a model\n",
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CifarzooError) as exc:
            OnnxClassifier(path)
        assert str(path) in str(exc.value), name
    with pytest.raises(CifarzooError, match="no such ONNX file"):
        OnnxClassifier(tmp_path / "missing.onnx")


def test_foreign_onnx_file_is_refused(legacy_onnx, tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(CifarzooError, match="not one exported by cifarzoo") as exc:
        OnnxClassifier(path)
    assert str(path) in str(exc.value)

    proto = onnx.load(str(legacy_onnx.path))  # ours, with its class list damaged
    for p in proto.metadata_props:
        if p.key == "classes":
            p.value = "[not json"
    onnx.save(proto, str(tmp_path / "damaged.onnx"))
    with pytest.raises(CifarzooError, match="metadata"):
        OnnxClassifier(tmp_path / "damaged.onnx")


def test_predict_logits_checks_its_input(legacy_onnx):
    clf = OnnxClassifier(legacy_onnx.path)
    with pytest.raises(CifarzooError, match="uint8"):
        clf.predict_logits(images(2).astype(np.float32))
    with pytest.raises(CifarzooError, match="32x32"):
        clf.predict_logits(np.zeros((2, 16, 16, 3), dtype=np.uint8))
    assert clf.predict_logits(np.zeros((0, 32, 32, 3), dtype=np.uint8)).shape == (0, len(CLASSES))


def test_missing_onnx_extra_says_how_to_install(fastnet_run, legacy_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(CifarzooError, match=r"pip install 'cifarzoo\[onnx\]'"):
        export_onnx(fastnet_run.dir)
    with pytest.raises(CifarzooError, match=r"pip install 'cifarzoo\[onnx\]'"):
        OnnxClassifier(legacy_onnx.path)


# --- predict through the ONNX file ---------------------------------------------------


def test_predict_with_onnx_matches_checkpoint(fastnet_run, legacy_onnx, tmp_path):
    predict = pytest.importorskip("cifarzoo.predict")
    from PIL import Image

    paths = []
    for i, img in enumerate(images(3, seed=50)):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(img).save(paths[-1])
    via_ckpt = predict.predict_files(fastnet_run.dir, paths, top_k=3, device="cpu")
    via_onnx = predict.predict_files(legacy_onnx.path, paths, top_k=3, device="cpu")
    for a, b in zip(via_ckpt, via_onnx):
        assert a.ok and b.ok
        assert [c for c, _ in a.top] == [c for c, _ in b.top]
        np.testing.assert_allclose([p for _, p in a.top], [p for _, p in b.top], atol=1e-5)
