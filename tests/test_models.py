import pytest
import torch
import torchvision
from torch import nn

from byol import ops
from byol.config import ModelConfig
from byol.errors import UserError
from byol.flat import flatten_parameters_
from byol.models import BYOL, ENCODERS, create_encoder, resnet
from byol.optim import LARS

FEATURES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048,
            "resnet152": 2048, "resnet200": 2048, "wide_resnet50_2": 2048,
            "wide_resnet101_2": 2048}
# Encoder parameters (no classifier) of the paper's networks, in millions, as its tables give them.
PAPER_PARAMETERS = {("resnet50", 1): 24, ("resnet50", 2): 94, ("resnet50", 4): 375,
                    ("resnet200", 2): 250}


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


def encoder_parameters(arch: str, width: int) -> int:
    with torch.device("meta"):  # shapes only: the 4x network has 375M parameters
        encoder, _ = create_encoder(ModelConfig(arch=arch, width=width))
    return sum(p.numel() for p in encoder.parameters())


@pytest.mark.parametrize(("arch", "width"), sorted(PAPER_PARAMETERS))
def test_width_multiplier_gives_the_papers_networks(arch, width):
    assert round(encoder_parameters(arch, width) / 1e6) == PAPER_PARAMETERS[arch, width]


def test_width_multiplier_widens_every_layer_stem_included():
    wide = resnet("resnet50", width=2)
    assert wide.conv1.out_channels == wide.bn1.num_features == 128
    assert wide.layer1[0].conv1.out_channels == 128  # the bottleneck's inner width
    assert wide.layer4[-1].conv3.out_channels == wide.fc.in_features == 4096
    small = resnet("resnet18", width=3, small_stem=True)
    assert small.conv1.out_channels == 192 and small.fc.in_features == 1536
    with torch.no_grad():
        assert small(torch.randn(2, 3, 8, 8)).shape == (2, 1000)


def test_width_1_is_torchvisions_network_parameter_for_parameter():
    torch.manual_seed(0)
    ours = resnet("resnet50").state_dict()
    torch.manual_seed(0)
    theirs = torchvision.models.resnet50().state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)


def test_torchvisions_wide_resnets_keep_their_names_and_refuse_a_width():
    assert encoder_parameters("wide_resnet50_2", 1) == sum(
        p.numel() for name, p in torchvision.models.wide_resnet50_2().named_parameters()
        if not name.startswith("fc."))
    with pytest.raises(UserError, match="--width"):
        create_encoder(ModelConfig(arch="wide_resnet50_2", width=2))


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
