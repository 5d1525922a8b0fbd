"""The model zoo: every registered model, parametrized over the registry (as timm/torchvision do).

Forward and backward run at a small width (fast on CPU); the parameter counts are
pinned at width 1.0 (building is cheap, no forward); the overfit test trains each
model on one fixed batch of 64 real images from the bundled sample.
"""
from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifarzoo.errors import CifarzooError
from cifarzoo.models import create, get_entry, list_models, register_model, resolve, scale_width
from cifarzoo.models import registry
from cifarzoo.models.fastnet import init_whitening
from cifarzoo.models.inception import GoogLeNet
from cifarzoo.models.resnet import BasicBlock, Bottleneck
from cifarzoo.models.summary import count_macs, count_parameters, layer_summary, model_table
from cifarzoo.models.vgg import CONFIGS
from cifarzoo.models.xception import XceptionBlock

MODELS = list_models()
SMALL = 0.125  # width for the shape/gradient tests: every channel count becomes 8..256


def test_zoo_is_complete():
    assert MODELS == ["fastnet", "inception", "resnet18", "resnet50", "vgg16", "vgg19", "xception"]


# --------------------------------------------------------------------------- forward / backward

@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", MODELS)
def test_forward_gives_finite_plain_logits(name, num_classes):
    torch.manual_seed(0)
    model = create(name, num_classes=num_classes, width_mult=SMALL)
    x = torch.randn(2, 3, 32, 32)
    for mode in (True, False):  # train mode (batch statistics) and eval mode (running statistics)
        out = model.train(mode)(x)
        assert isinstance(out, torch.Tensor), f"{name} returned {type(out)} in train={mode}"
        assert out.shape == (2, num_classes)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        # Plain logits: no ReLU (some negative) and no softmax (rows do not sum to 1).
        assert (out < 0).any(), f"{name}: all logits >= 0, a ReLU on the output?"
        assert not torch.allclose(out.sum(1), torch.ones(2)), f"{name}: rows sum to 1, a softmax on the output?"


@pytest.mark.parametrize("name", MODELS)
def test_models_are_dtype_neutral(name):
    model = create(name, width_mult=SMALL).to(torch.float64).eval()
    out = model(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (2, 10)


def _assert_every_parameter_gets_a_gradient(model: nn.Module, outputs) -> None:
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    y = torch.tensor([1, 7])
    sum(F.cross_entropy(o, y) for o in outputs).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches: {missing}"
    zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
    assert not zero, f"gradient is exactly zero for: {zero}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = create(name, width_mult=SMALL).train()
    _assert_every_parameter_gets_a_gradient(model, model(torch.randn(2, 3, 32, 32)))


def test_backward_reaches_every_parameter_with_inception_aux_heads():
    torch.manual_seed(0)
    model = create("inception", width_mult=SMALL, aux_logits=True).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, tuple) and len(out) == 3
    _assert_every_parameter_gets_a_gradient(model, out)


# --------------------------------------------------------------------------- pinned sizes

# Parameter counts at width 1.0 and 10 classes. Convs have no bias (BN follows them);
# each BN has 2·C parameters (scale, shift); a Linear has in·out + out.
PINNED_PARAMS = {
    # 9·Σ c_in·c_out over the 13 convs (3→64, 64→64, 64→128, 128→128, 128→256, 256→256 ×2,
    # 256→512, 512→512 ×5) = 14,710,464; BN 2·4224 = 8,448; classifier
    # 2·(512·512 + 512) + (512·10 + 10) = 530,442.
    "vgg16": 15_249_354,
    # config E adds 256→256, 512→512, 512→512: convs 20,018,880; BN 2·5504 = 11,008; same classifier.
    "vgg19": 20_560_330,
    # The kuangliu CIFAR ResNet-18: stem 3·64·9 + 128 = 1,856; stage convs 10,985,472 (the four
    # stages: 147,968 / 525,568 / 2,099,712 / 8,393,728 including BN and the three projections);
    # fc 512·10 + 10 = 5,130. Total 11,173,962, the figure published for that repository.
    "resnet18": 11_173_962,
    # Bottleneck (3,4,6,3), expansion 4: ImageNet ResNet-50 has 25,557,032 parameters; replace
    # the 7×7 stem (9,408) by a 3×3 one (1,728) and the 2048→1000 fc (2,049,000) by 2048→10
    # (20,490): 25,557,032 − 9,408 + 1,728 − 2,049,000 + 20,490 = 23,520,842.
    "resnet50": 23_520_842,
    # Stem 3·192·9 + 2·192 = 5,568. Module with input c and row (a, r3, c3, r5, c5, p) of the
    # paper's table: c·(a + r3 + r5 + p) + 9·r3·c3 + 25·r5·c5 + 2·(a + r3 + c3 + r5 + c5 + p);
    # 3a…5b sum to 5,856,106 (the true 5×5 convs are 2,080,000 of it); fc 1024·10 + 10 = 10,250.
    "inception": 5_871_914,
    # Keras' Xception without top has 20,806,952 trainable parameters (same layers: bias-free
    # convs and separable convs, BN everywhere); + fc 2048·10 + 10 = 20,490. The CIFAR changes
    # are strides and padding only, which do not change the count.
    "xception": 20_827_442,
    # whiten 3·24·2·2 + 24 = 312; convs 9·(24·64 + 64·64 + 64·256 + 256·256 + 256·256 + 256·256)
    # = 1,965,600; BN shift only (airbench's BN has no learned scale) 64+64+256+256+256+256
    # = 1,152; head 256·10 (no bias) = 2,560.
    "fastnet": 1_971_640,
}


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_is_pinned(name):
    assert count_parameters(create(name, num_classes=10, width_mult=1.0)) == PINNED_PARAMS[name]


def test_count_macs_counts_multiply_accumulates():
    assert count_macs(nn.Linear(10, 5), input_size=(1, 10)) == 50
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False).train()
    assert count_macs(conv) == 3 * 8 * 9 * 32 * 32
    assert conv.training  # mode restored


def test_width_mult_shrinks_every_model():
    for name in MODELS:
        assert count_parameters(create(name, width_mult=SMALL)) < count_parameters(create(name, width_mult=0.5))


# --------------------------------------------------------------------------- overfit one batch

OVERFIT_STEPS = 300  # bound on Adam steps to bring the loss of one batch below 0.1
# Narrow widths keep this test fast on CPU. Steps to loss < 0.1 measured with seed 0
# (CPU, torch 2.13): fastnet 115, inception 44, resnet18 53, resnet50 25, vgg16 127,
# vgg19 115, xception 39, so every model has a margin of 2x or more under the bound.
# fastnet's logits are scaled by 1/9, so at Adam's lr 1e-3 it is slower to fit and
# runs wider; inception runs at 0.25 because at 0.125 it needs twice the steps.
OVERFIT_WIDTH = {"fastnet": 0.5, "inception": 0.25}  # others: 0.125


@pytest.fixture(scope="module")
def one_batch(request):
    try:
        from cifarzoo.data.loader import normalize
        sample = request.getfixturevalue("bundled_sample")
    except ImportError as exc:
        pytest.skip(f"the overfit test needs cifarzoo.data.load('sample') and cifarzoo.data.loader.normalize: {exc}")
    images = normalize(sample.train_images[:64], sample.mean, sample.std)  # (64, 3, 32, 32) float32
    labels = torch.as_tensor(sample.train_labels[:64], dtype=torch.int64)
    assert images.shape == (64, 3, 32, 32) and len(labels.unique()) > 5
    return images, labels


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_overfits_one_batch(name, one_batch):
    images, labels = one_batch
    torch.manual_seed(0)
    # channels_last: the same arithmetic, with CPU kernels (max-pool above all) 1.3-2x faster.
    images = images.contiguous(memory_format=torch.channels_last)
    model = create(name, width_mult=OVERFIT_WIDTH.get(name, 0.125)).to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # the seed study's setting
    losses = []
    for _ in range(OVERFIT_STEPS):
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] < 0.1:
            break
    assert losses[-1] < 0.1, f"{name}: loss {losses[0]:.3f} → {losses[-1]:.3f} after {len(losses)} steps"


# --------------------------------------------------------------------------- residual blocks

class _Shifted(nn.Module):
    """A shortcut whose output is moved by ``delta``."""

    def __init__(self, inner: nn.Module, delta: float):
        super().__init__()
        self.inner, self.delta = inner, delta

    def forward(self, x):
        return self.inner(x) + self.delta


def _zero_last_bn(block: nn.Module) -> None:
    bn = [m for m in block.residual.modules() if isinstance(m, nn.BatchNorm2d)][-1]
    nn.init.zeros_(bn.weight)
    nn.init.zeros_(bn.bias)


RESNET_BLOCKS = [
    (BasicBlock, 16, 16, 1),  # identity shortcut
    (BasicBlock, 16, 32, 2),  # projection shortcut
    (Bottleneck, 64, 16, 1),  # identity shortcut (64 = 4·16)
    (Bottleneck, 32, 16, 2),  # projection shortcut
]


@pytest.mark.parametrize("block_cls,in_channels,planes,stride", RESNET_BLOCKS)
def test_resnet_block_adds_its_shortcut(block_cls, in_channels, planes, stride):
    torch.manual_seed(0)
    block = block_cls(in_channels, planes, stride).eval()
    x = torch.randn(2, in_channels, 8, 8)
    with torch.no_grad():
        out = block(x)
        expected = F.relu(block.residual(x) + block.shortcut(x))
        torch.testing.assert_close(out, expected)
        # Moving the shortcut's output moves the block's output.
        block.shortcut = _Shifted(block.shortcut, 1.0)
        torch.testing.assert_close(block(x), F.relu(block.residual(x) + block.shortcut.inner(x) + 1.0))
        assert not torch.allclose(block(x), out)
        block.shortcut = block.shortcut.inner
        # With the residual branch silenced the block is relu(shortcut(x)); relu(x) when identity.
        _zero_last_bn(block)
        torch.testing.assert_close(block(x), F.relu(block.shortcut(x)))
        if stride == 1 and in_channels == planes * block_cls.expansion:
            assert isinstance(block.shortcut, nn.Identity)
            torch.testing.assert_close(block(x), F.relu(x))
        else:
            assert isinstance(block.shortcut[0], nn.Conv2d) and block.shortcut[0].kernel_size == (1, 1)
            assert block(x).shape == (2, planes * block_cls.expansion, 8 // stride, 8 // stride)


@pytest.mark.parametrize("in_channels,channels,stride", [(16, (16, 16, 16), 1), (16, (32, 32), 2)])
def test_xception_block_adds_its_shortcut(in_channels, channels, stride):
    torch.manual_seed(0)
    block = XceptionBlock(in_channels, channels, stride).eval()
    x = torch.randn(2, in_channels, 8, 8)
    with torch.no_grad():
        out = block(x)
        torch.testing.assert_close(out, block.residual(x) + block.shortcut(x))
        block.shortcut = _Shifted(block.shortcut, 1.0)
        torch.testing.assert_close(block(x), out + 1.0)  # no ReLU after the sum in Xception
        block.shortcut = block.shortcut.inner
        _zero_last_bn(block)
        torch.testing.assert_close(block(x), block.shortcut(x))
        if stride == 1:
            torch.testing.assert_close(block(x), x)  # identity block
        # The leading ReLU must not clobber the input that the shortcut also reads.
        x_copy = x.clone()
        block(x)
        torch.testing.assert_close(x, x_copy)


# --------------------------------------------------------------------------- per-architecture facts

def _shapes_after(model: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor) -> dict[str, tuple]:
    shapes = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, k=k: shapes.__setitem__(k, tuple(o.shape)))
             for k, m in modules.items()]
    model(x)
    for h in hooks:
        h.remove()
    return shapes


def test_vgg_configs_and_feature_map():
    assert sum(isinstance(c, int) for c in CONFIGS["D"]) == 13 and CONFIGS["D"].count("M") == 5
    assert sum(isinstance(c, int) for c in CONFIGS["E"]) == 16 and CONFIGS["E"].count("M") == 5
    model = create("vgg16").eval()
    with torch.no_grad():
        assert model.features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 1, 1)
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 512), (512, 10)]
    assert sum(isinstance(m, nn.Dropout) for m in model.classifier) == 2
    assert create("vgg16", hidden=1024).classifier[1].out_features == 1024


def test_resnet_stem_stages_and_zero_init():
    model = create("resnet50", width_mult=SMALL).eval()
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())  # CIFAR stem: no max-pool
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3, model.layer4)] == [3, 4, 6, 3]
    stages = {k: getattr(model, k) for k in ("layer1", "layer2", "layer3", "layer4")}
    shapes = _shapes_after(model, stages, torch.randn(1, 3, 32, 32))
    assert [s[2] for s in shapes.values()] == [32, 16, 8, 4]
    assert shapes["layer4"][1] == 4 * scale_width(512, SMALL)
    assert [len(create("resnet18", width_mult=SMALL).layer1)] == [2]
    zeroed = create("resnet18", width_mult=SMALL, zero_init_residual=True)
    blocks = [m for m in zeroed.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8 and all(not b.residual[-1].weight.any() for b in blocks)


def test_inception_modules_follow_the_paper():
    model = create("inception")
    out_channels = {k: m.out_channels for k, m in model.blocks.items() if hasattr(m, "out_channels")}
    assert out_channels == {"3a": 256, "3b": 480, "4a": 512, "4b": 512, "4c": 512, "4d": 528,
                            "4e": 832, "5a": 832, "5b": 1024}
    assert model.blocks["3a"].branch3[1][0].kernel_size == (5, 5)  # the paper's true 5×5
    assert model.dropout.p == 0.4 and len(model.aux) == 0  # no aux heads unless asked
    small = create("inception", width_mult=SMALL).eval()
    shapes = _shapes_after(small, {k: small.blocks[k] for k in ("3b", "4a", "4e", "5b")}, torch.randn(1, 3, 32, 32))
    assert [s[2] for s in shapes.values()] == [32, 16, 16, 8]  # pools after 3b and 4e only


def test_inception_aux_heads_train_only_and_droppable():
    torch.manual_seed(0)
    model = create("googlenet", width_mult=SMALL, aux_logits=True)
    assert isinstance(model, GoogLeNet) and set(model.aux) == {"4a", "4d"}
    calls = []
    for head in model.aux.values():
        head.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 3, 32, 32)
    out = model.train()(x)
    logits, aux1, aux2 = out
    # Named, as torchvision's GoogLeNetOutputs.
    assert out.logits is logits and all(a is b for a, b in zip(out.aux_logits, (aux1, aux2)))
    assert logits.shape == aux1.shape == aux2.shape == (2, 10) and len(calls) == 2
    out = model.eval()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10) and len(calls) == 2  # heads not run
    n = count_parameters(model)
    model.drop_aux()
    assert count_parameters(model) < n and not any("aux" in k for k in model.state_dict())
    assert isinstance(model.train()(x), torch.Tensor)


def test_xception_flows_keep_spatial_extent():
    model = create("xception", width_mult=SMALL).eval()
    assert len(model.entry_flow) == 3 and len(model.middle_flow) == 8 and len(model.exit_flow) == 1
    flows = {k: getattr(model, k) for k in ("stem", "entry_flow", "middle_flow", "exit_flow")}
    shapes = _shapes_after(model, flows, torch.randn(1, 3, 32, 32))
    assert [s[2] for s in shapes.values()] == [32, 8, 8, 4]
    # Separable convs: depthwise then pointwise, no activation or BN between them.
    sep = model.middle_flow[0].residual[1]
    assert [type(m) for m in sep] == [nn.Conv2d, nn.Conv2d] and sep[0].groups == sep[0].in_channels


def test_fastnet_whitening_layer_and_init():
    model = create("fastnet")
    w = model.whiten
    assert isinstance(w, nn.Conv2d) and w.kernel_size == (2, 2) and w.out_channels == 24 and w.padding == (0, 0)
    assert model.head.bias is None and model.scale == pytest.approx(1 / 9)
    # Correlated data: smooth noise, so neighbouring pixels and channels co-vary.
    torch.manual_seed(0)
    x = F.avg_pool2d(torch.randn(64, 3, 34, 34), 3, stride=1) * 3 + torch.randn(64, 1, 32, 32)
    eps = 5e-4
    eigenvalues = init_whitening(model, x, eps=eps)
    assert torch.all(eigenvalues[:-1] >= eigenvalues[1:])  # largest first
    torch.testing.assert_close(w.weight[12:], -w.weight[:12])
    assert not w.bias.any()
    with torch.no_grad():
        y = F.conv2d(x, w.weight[:12])  # (64, 12, 31, 31)
    assert y.shape[-1] == 31
    flat = y.permute(1, 0, 2, 3).reshape(12, -1).double()
    cov = flat @ flat.T / flat.shape[1]
    expected = torch.diag(eigenvalues / (eigenvalues + eps))  # ≈ identity
    torch.testing.assert_close(cov, expected, atol=1e-4, rtol=1e-3)
    with pytest.raises(CifarzooError, match="whiten"):
        init_whitening(create("resnet18", width_mult=SMALL), x)
    with pytest.raises(CifarzooError, match="float images"):
        init_whitening(model, torch.zeros(4, 32, 32, 3, dtype=torch.uint8))


# --------------------------------------------------------------------------- registry

def test_builders_share_one_signature_and_cite_a_paper():
    for name in MODELS:
        entry = get_entry(name)
        params = inspect.signature(entry.builder).parameters
        assert params["num_classes"].kind is inspect.Parameter.KEYWORD_ONLY and params["num_classes"].default == 10
        assert params["width_mult"].kind is inspect.Parameter.KEYWORD_ONLY and params["width_mult"].default == 1.0
        assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        assert entry.paper and any(str(y) in entry.paper for y in range(1990, 2030))
        assert "CIFAR" in inspect.getmodule(entry.builder).__doc__


def test_duplicate_name_raises_and_leaves_the_registry_alone():
    before = dict(registry._REGISTRY), dict(registry._ALIASES)
    with pytest.raises(CifarzooError, match="registered twice"):
        @register_model(paper="x")
        def resnet18(*, num_classes=10, width_mult=1.0, **kwargs):  # noqa: F811
            raise AssertionError

    with pytest.raises(CifarzooError, match="'googlenet' is registered twice"):
        @register_model(paper="x", aliases=("googlenet",))
        def brand_new_net(*, num_classes=10, width_mult=1.0, **kwargs):
            raise AssertionError

    assert (dict(registry._REGISTRY), dict(registry._ALIASES)) == before


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(CifarzooError) as info:
        create("resnet51")
    message = str(info.value)
    assert "resnet51" in message and all(name in message for name in MODELS) and "googlenet" in message


def test_alias_googlenet_is_inception():
    assert resolve("googlenet") == "inception" and resolve(" GoogLeNet ") == "inception"
    assert get_entry("googlenet") is get_entry("inception")
    assert get_entry("inception").aliases == ("googlenet",)
    assert isinstance(create("googlenet", width_mult=SMALL), GoogLeNet)


@pytest.mark.parametrize("channels,width,expected", [
    (64, 1.0, 64), (64, 0.25, 16), (64, 0.1, 8), (3, 1.0, 8), (100, 1.0, 104),
    (92, 1.0, 96), (728, 0.25, 184), (1024, 0.125, 128), (48, 0.125, 8), (64, 2.0, 128),
])
def test_scale_width_rounds_to_multiples_of_8(channels, width, expected):
    assert scale_width(channels, width) == expected


def test_scale_width_is_a_positive_multiple_of_8_everywhere():
    for channels in (3, 16, 24, 48, 96, 192, 208, 288, 728, 2048):
        for width in (0.01, 0.1, 0.125, 0.3, 0.5, 0.75, 1.0, 1.5, 3.0):
            c = scale_width(channels, width)
            assert c % 8 == 0 and c >= 8 and abs(c - channels * width) <= 4 + max(0, 8 - channels * width)


def test_create_validates_its_arguments():
    with pytest.raises(CifarzooError, match="num_classes"):
        create("resnet18", num_classes=1)
    with pytest.raises(CifarzooError, match="width_mult"):
        create("resnet18", width_mult=0)


# --------------------------------------------------------------------------- summaries

def test_model_table_and_layer_summary():
    rows = model_table(width_mult=SMALL)
    assert [r["name"] for r in rows] == MODELS
    for r in rows:
        assert set(r) == {"name", "params", "macs", "paper", "aliases"}
        assert r["params"] == count_parameters(create(r["name"], width_mult=SMALL)) and r["macs"] > 0
    assert next(r for r in rows if r["name"] == "inception")["aliases"] == ["googlenet"]
    text = layer_summary("resnet18", SMALL)
    assert "BasicBlock" in text and "[1, 10]" in text and "Total params" in text
