"""Tests for imutune.models: the registry, architecture facts, head replacement and embeddings."""
from __future__ import annotations

import pytest
import torch
from imutune.models.resnet1d import (
    ResNet1d,
    ResNet1dConfig,
    count_parameters,
    create_model,
    default_config,
    list_models,
    register_model,
    replace_head,
)
from torch import nn


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tests/conftest.py


def test_list_models():
    assert list_models() == ["mobilecnn1d", "mobilecnn1d-train", "resnet1d18", "resnet1d34", "tinycnn1d",
                             "tinycnn1d-train"]


@pytest.mark.parametrize("name", ["mobilecnn1d", "resnet1d18", "resnet1d34", "tinycnn1d"])
def test_every_model_maps_nct_to_logits(name):
    torch.manual_seed(0)
    m = create_model(name, in_channels=6, num_classes=5).eval()
    assert isinstance(m, ResNet1d) and m.in_channels == 6 and m.num_classes == 5
    assert m.config == default_config(name)
    with torch.no_grad():
        out = m(torch.randn(2, 6, 100))
    assert out.shape == (2, 5) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_mobilecnn1d_is_phone_size():
    n = count_parameters(create_model("mobilecnn1d", in_channels=6, num_classes=7))
    assert 10_000 < n < 100_000


def test_tinycnn1d_smaller_than_mobile():
    tiny = count_parameters(create_model("tinycnn1d", in_channels=6, num_classes=7))
    mobile = count_parameters(create_model("mobilecnn1d", in_channels=6, num_classes=7))
    assert tiny < mobile


def test_resnet1d34_structure():
    m = create_model("resnet1d34", in_channels=6, num_classes=4)
    assert [len(stage) for stage in m.stages] == [3, 4, 6, 3]
    assert [stage[0].conv1.out_channels for stage in m.stages] == [64, 128, 256, 512]
    # the first block of stages 2-4 halves the time axis and projects the shortcut
    assert [stage[0].conv1.stride[0] for stage in m.stages] == [1, 2, 2, 2]
    assert m.stages[0][0].downsample is None
    assert all(stage[0].downsample is not None for stage in list(m.stages)[1:])
    assert m.embedding_dim == 512 and m.head.in_features == 512
    # 16 basic blocks x 2 convs + stem conv + head = 34 weighted layers
    n_convs = sum(1 for mod in m.modules() if isinstance(mod, nn.Conv1d) and mod.kernel_size[0] != 1)
    assert n_convs + 1 == 34
    assert isinstance(m.stem[-1], nn.MaxPool1d)


def test_resnet1d18_blocks():
    m = create_model("resnet1d18", in_channels=3, num_classes=2)
    assert [len(stage) for stage in m.stages] == [2, 2, 2, 2]


def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"model_name 'resnet999' is not registered; expected one of \['mobilecnn1d'"):
        create_model("resnet999", in_channels=6, num_classes=3)
    with pytest.raises(ValueError, match=r"model_name 'nope' is not registered"):
        default_config("nope")


def test_unknown_override():
    with pytest.raises(ValueError, match=r"unknown model config fields \['depth'\]; expected some of \['layers'"):
        create_model("tinycnn1d", in_channels=6, num_classes=3, depth=5)


def test_overrides_apply_and_lists_become_tuples():
    m = create_model("tinycnn1d", in_channels=2, num_classes=3, widths=[4, 12], dropout=0.5)
    assert m.config.widths == (4, 12) and isinstance(m.config.widths, tuple)
    assert m.config.dropout == 0.5 and m.embedding_dim == 12
    assert default_config("tinycnn1d").widths == (8, 16)  # the registry default is untouched
    assert m(torch.randn(2, 2, 40)).shape == (2, 3)


def test_config_and_constructor_errors():
    with pytest.raises(ValueError, match=r"layers \(1, 1\) and widths \(8,\) must be non-empty and of equal length"):
        ResNet1dConfig(layers=(1, 1), widths=(8,))
    with pytest.raises(ValueError, match=r"must be non-empty"):
        ResNet1dConfig(layers=(), widths=())
    with pytest.raises(ValueError, match=r"in_channels must be >= 1 and num_classes >= 2, got 6, 1"):
        create_model("tinycnn1d", in_channels=6, num_classes=1)
    with pytest.raises(ValueError, match=r"got 0, 3"):
        create_model("tinycnn1d", in_channels=0, num_classes=3)


def test_replace_head_changes_output_size():
    torch.manual_seed(0)
    m = create_model("tinycnn1d", in_channels=6, num_classes=3).eval()
    x = torch.randn(4, 6, 50)
    with torch.no_grad():
        emb_before = m.embed(x)
    old_head = m.head
    out = replace_head(m, 7)
    assert out is m and m.num_classes == 7 and m.head is not old_head
    assert m.head.in_features == m.embedding_dim and m.head.out_features == 7
    with torch.no_grad():
        assert m(x).shape == (4, 7)
        torch.testing.assert_close(m.embed(x), emb_before)   # the backbone is untouched


def test_embed_shape_and_forward_consistency():
    torch.manual_seed(0)
    m = create_model("mobilecnn1d", in_channels=6, num_classes=4).eval()
    x = torch.randn(3, 6, 100)
    with torch.no_grad():
        e = m.embed(x)
        assert e.shape == (3, 96) and m.embedding_dim == 96
        torch.testing.assert_close(m.head(e), m(x))


def test_count_parameters_trainable_only():
    m = create_model("tinycnn1d", in_channels=6, num_classes=3)
    total = count_parameters(m)
    assert total == sum(p.numel() for p in m.parameters())
    for p in m.parameters():
        p.requires_grad_(False)
    for p in m.head.parameters():
        p.requires_grad_(True)
    assert count_parameters(m, trainable_only=True) == 16 * 3 + 3
    assert count_parameters(m) == total


def test_register_model():
    register_model("_test_micro", ResNet1dConfig(layers=(1,), widths=(4,), stem_width=4, stem_pool=False))
    try:
        assert "_test_micro" in list_models()
        m = create_model("_test_micro", in_channels=1, num_classes=2)
        assert m(torch.randn(2, 1, 32)).shape == (2, 2)
    finally:
        from imutune.models import resnet1d as models

        models._REGISTRY.pop("_test_micro", None)
    assert "_test_micro" not in list_models()
