import pytest
import torch
from torch import nn

from byol import ops
from byol.config import ModelConfig
from byol.errors import UserError
from byol.flat import flatten_parameters_
from byol.models import BYOL, ENCODERS, create_encoder
from byol.optim import LARS

FEATURES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048,
            "resnet152": 2048}


@pytest.mark.parametrize("arch", sorted(ENCODERS))
def test_every_registered_encoder_maps_images_to_pooled_features(arch):
    encoder, dim = create_encoder(ModelConfig(arch=arch, small_stem=True))
    assert dim == FEATURES[arch]
    encoder.eval()
    with torch.no_grad():
        assert encoder(torch.randn(2, 3, 16, 16)).shape == (2, dim)


def test_small_stem_is_a_3x3_stride_1_conv_without_max_pool():
    encoder, _ = create_encoder(ModelConfig(arch="resnet18", small_stem=True))
    assert encoder.conv1.kernel_size == (3, 3) and encoder.conv1.stride == (1, 1)
    assert isinstance(encoder.maxpool, nn.Identity)
    imagenet, _ = create_encoder(ModelConfig(arch="resnet18"))
    assert imagenet.conv1.kernel_size == (7, 7)


def test_width_multiplier_widens_bottlenecks_and_is_refused_for_basic_blocks():
    wide, _ = create_encoder(ModelConfig(arch="resnet50", width=2))
    assert wide.layer1[0].conv1.out_channels == 128
    with pytest.raises(UserError, match="bottleneck"):
        create_encoder(ModelConfig(arch="resnet18", width=2))


def test_unknown_architecture_is_a_user_error():
    with pytest.raises(UserError, match="resnet50"):
        create_encoder(ModelConfig(arch="vgg16"))


def test_projector_and_predictor_follow_the_paper():
    model = BYOL(ModelConfig(arch="resnet18"))
    for head, in_dim in ((model.online.projector, 512), (model.predictor, 256)):
        first, norm, act, last = head
        assert (first.in_features, first.out_features) == (in_dim, 4096)
        assert isinstance(norm, nn.BatchNorm1d) and isinstance(act, nn.ReLU)
        assert (last.in_features, last.out_features, last.bias) == (4096, 256, None)


def test_target_starts_as_a_copy_of_online_and_never_requires_grad():
    model = BYOL(ModelConfig(arch="resnet18", projector_hidden=32, projector_dim=16))
    target = list(model.target.parameters())
    assert all(torch.equal(t, o) for t, o in zip(target, model.online.parameters()))
    assert not any(p.requires_grad for p in model.target.parameters())
    assert {id(p) for p in model.trainable_parameters()}.isdisjoint(id(p) for p in target)


@pytest.mark.parametrize("backend", ops.BACKENDS)
def test_ema_updates_parameters_but_not_batchnorm_statistics(backend):
    model = BYOL(ModelConfig(arch="resnet18", projector_hidden=32, projector_dim=16))
    online = flatten_parameters_(list(model.trainable_parameters()))
    target = flatten_parameters_(list(model.target.parameters()))
    model.train()
    model.online(torch.randn(4, 3, 16, 16))  # online BN running stats now differ
    before = {k: v.clone() for k, v in model.target.state_dict().items()}
    with torch.no_grad():
        for p in model.online.parameters():
            p.add_(1.0)
    ops.ema_update_(target, online, tau=0.9, backend=backend)
    after = model.target.state_dict()
    for name, param in model.target.named_parameters():
        torch.testing.assert_close(param, before[name] + 0.1)
    for name, buffer in model.target.named_buffers():
        assert torch.equal(after[name], before[name]), name


def test_lars_groups_exclude_exactly_the_biases_and_normalization_parameters():
    model = BYOL(ModelConfig(arch="resnet18", projector_hidden=32, projector_dim=16))
    optimizer = LARS(model.trainable_parameters(), lr=0.1, weight_decay=0.0, momentum=0.9,
                     eta=1e-3, backend="eager")
    params = optimizer.param_groups[0]["params"]
    excluded = {id(p) for p, flag in zip(params, optimizer.flat.excluded) if flag}
    expected_excluded = {
        id(p)
        for module in [model.online, model.predictor]
        for sub in module.modules()
        for name, p in sub.named_parameters(recurse=False)
        if name == "bias" or isinstance(sub, nn.BatchNorm1d | nn.BatchNorm2d)
    }
    assert excluded == expected_excluded
    assert len(params) == len(list(model.trainable_parameters()))
