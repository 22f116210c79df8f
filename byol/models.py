"""BYOL's networks: a torchvision ResNet encoder f, projector g and predictor q.

    online:  view -> f -> g -> q   (trained)
    target:  view -> f -> g        (a copy of the online f and g, updated only by EMA)
"""

import copy
from collections.abc import Callable, Iterator

from torch import Tensor, nn
from torchvision import models
from torchvision.models.resnet import ResNet

from byol.config import ModelConfig
from byol.errors import UserError

# Encoder registry: name -> torchvision builder. Width multipliers apply to the bottleneck
# models only (torchvision's `width_per_group`; BasicBlock supports just the standard width).
ENCODERS: dict[str, Callable[..., ResNet]] = {
    "resnet18": models.resnet18,
    "resnet34": models.resnet34,
    "resnet50": models.resnet50,
    "resnet101": models.resnet101,
    "resnet152": models.resnet152,
}
BOTTLENECK_ENCODERS = frozenset({"resnet50", "resnet101", "resnet152"})


def create_encoder(config: ModelConfig) -> tuple[ResNet, int]:
    """A randomly initialized torchvision ResNet without its classifier, and its feature width.

    The returned module maps (B, 3, H, W) images to (B, feature_dim) pooled features.
    """
    if config.arch not in ENCODERS:
        raise UserError(
            f"Unknown architecture {config.arch!r}; choose one of {', '.join(ENCODERS)}."
        )
    if config.width != 1 and config.arch not in BOTTLENECK_ENCODERS:
        raise UserError(
            f"--width needs a bottleneck ResNet (resnet50 or deeper), not {config.arch}."
        )
    encoder = ENCODERS[config.arch](weights=None, width_per_group=64 * config.width)
    if config.small_stem:
        # For 32-64 px images the ImageNet stem (7x7 stride 2 + max-pool) would shrink the
        # input 4x before the first block; keep full resolution instead.
        encoder.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        encoder.maxpool = nn.Identity()
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
