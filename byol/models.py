"""BYOL's networks: a torchvision ResNet encoder f, projector g and predictor q.

    online:  view -> f -> g -> q   (trained)
    target:  view -> f -> g        (a copy of the online f and g, updated only by EMA)
"""

import copy
from collections.abc import Iterator

from torch import Tensor, nn
from torchvision import models
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from byol.config import ModelConfig
from byol.errors import UserError

# Block and blocks per stage of each encoder. torchvision builds all but resnet200, the paper's
# deepest network, from the same parts.
LAYOUTS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
    "resnet200": (Bottleneck, [3, 24, 36, 3]),
}
# torchvision's wide ResNets double only the inner 3x3 layers of each bottleneck: another network
# than the paper's ResNet-50 (2x), kept under torchvision's names.
TORCHVISION_WIDE = {"wide_resnet50_2": models.wide_resnet50_2,
                    "wide_resnet101_2": models.wide_resnet101_2}
ENCODERS = (*LAYOUTS, *TORCHVISION_WIDE)
STEM_CHANNELS = 64


def resnet(arch: str, width: int = 1, small_stem: bool = False) -> ResNet:
    """A randomly initialized torchvision ResNet, with its 1000-class fc.

    `width` multiplies the channels of every layer, stem included, as the paper's ResNet-50
    (2x)/(4x) and ResNet-200 (2x) do. `small_stem` swaps the 7x7 stride-2 stem and max-pool for a
    3x3 stride-1 convolution: for 32-64 px images the ImageNet stem would shrink the input 4x
    before the first block.
    """
    if arch not in ENCODERS:
        raise UserError(f"Unknown architecture {arch!r}; choose one of {', '.join(ENCODERS)}.")
    if arch in TORCHVISION_WIDE:
        if width != 1:
            raise UserError(f"{arch} has its own fixed widening; use --width with resnet50 "
                            "and the like instead.")
        model = TORCHVISION_WIDE[arch](weights=None)
    else:
        block, layers = LAYOUTS[arch]
        model = ResNet(block, layers)
        if width != 1:
            _widen(model, block, layers, width)
    if small_stem:
        model.conv1 = nn.Conv2d(3, STEM_CHANNELS * width, kernel_size=3, stride=1, padding=1,
                                bias=False)
        model.maxpool = nn.Identity()
    return model


def _widen(model: ResNet, block: type[nn.Module], layers: list[int], width: int) -> None:
    """Rebuild the stem and the four stages `width` times wider, initialized as torchvision
    initializes a ResNet. torchvision's constructor fixes the stem at 64 channels; its
    `_make_layer` builds a stage from `inplanes`, which it advances."""
    stem = STEM_CHANNELS * width
    model.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(stem)
    model.inplanes = stem
    for stage, blocks in enumerate(layers):
        planes = stem * 2 ** stage
        setattr(model, f"layer{stage + 1}",
                model._make_layer(block, planes, blocks, stride=1 if stage == 0 else 2))
    model.fc = nn.Linear(model.inplanes, model.fc.out_features)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def create_encoder(config: ModelConfig) -> tuple[ResNet, int]:
    """A randomly initialized ResNet without its classifier, and its feature width.

    The returned module maps (B, 3, H, W) images to (B, feature_dim) pooled features.
    """
    encoder = resnet(config.arch, config.width, config.small_stem)
    feature_dim = encoder.fc.in_features
    encoder.fc = nn.Identity()
    return encoder, feature_dim


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU -> Linear (no bias): BYOL's projector and predictor."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim, bias=False),
    )


class ProjectionNetwork(nn.Module):
    """Encoder f followed by projector g: (B, 3, H, W) -> (features (B, feature_dim),
    projection (B, projector_dim)). The features feed the monitors (byol.monitors)."""

    def __init__(self, encoder: nn.Module, projector: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.encoder(images)
        return features, self.projector(features)


class BYOL(nn.Module):
    """The online network (f, g), its predictor q, and the target network (EMA of f, g).

    The target starts as an exact copy of the online network and never receives gradients.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        encoder, feature_dim = create_encoder(config)
        self.feature_dim = feature_dim
        projector = mlp_head(feature_dim, config.projector_hidden, config.projector_dim)
        self.online = ProjectionNetwork(encoder, projector)
        self.predictor = mlp_head(
            config.projector_dim, config.projector_hidden, config.projector_dim
        )
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Online encoder, projector and predictor parameters: what the optimizer updates."""
        yield from self.online.parameters()
        yield from self.predictor.parameters()


class OnlineNetwork(nn.Module):
    """f, g and q in one module, so that one DDP wrapper covers every trainable parameter:
    (B, 3, H, W) -> (features, projection, prediction)."""

    def __init__(self, online: ProjectionNetwork, predictor: nn.Module):
        super().__init__()
        self.online = online
        self.predictor = predictor

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features, projection = self.online(images)
        return features, projection, self.predictor(projection)
