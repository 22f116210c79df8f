"""The peers' BYOL training steps, each written as its library's documentation writes it, for
gpu_suite.py to time beside byolctl's on the same device, model, batch and precision.

    bash benchmarks/fetch_peers.sh      # once: their wheels into .peers/site (git-ignored)

- lightly (its BYOL example, examples/pytorch/byol.py): a torchvision ResNet without its fc
  as the backbone, `BYOLProjectionHead` and `BYOLPredictionHead`, momentum copies frozen with
  `deactivate_requires_grad`, `update_momentum` at a `cosine_schedule` momentum,
  `NegativeCosineSimilarity` both ways, SGD (lr 0.06).
- byol-pytorch (lucidrains; its README's usage): `BYOL(resnet, image_size=...,
  hidden_layer="avgpool")`, Adam (lr 3e-4), `loss = learner(images); opt.zero_grad();
  loss.backward(); opt.step(); learner.update_moving_average()`. The learner draws its two
  views on the device itself (its default SimCLR augmentations), so its step includes them.

The projector and predictor get byolctl's widths (the libraries' BYOL defaults for ResNet-50:
4096 hidden, 256 out). Both train on random tensors already on the device, as byolctl's timed
step does. In bf16 the forward passes and the loss run under `torch.autocast`, the usual
mixed-precision recipe; "fp32" is the documentation's code as written.
"""

import copy
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch
import torchvision
from torch import nn

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / ".peers" / "site"
LIBRARIES = ("lightly", "byol-pytorch")


def missing() -> str | None:
    """Why the peers cannot be imported, or None when they can (from .peers/site, which goes
    to the end of sys.path, so that it never shadows the machine's own packages)."""
    if not SITE.is_dir():
        return (f"{SITE.relative_to(REPO)} is missing: run `bash benchmarks/fetch_peers.sh` "
                "first (and carry .peers/site to a GPU machine)")
    if str(SITE) not in sys.path:
        sys.path.append(str(SITE))
    try:
        import byol_pytorch  # noqa: F401
        import lightly  # noqa: F401
    except ImportError as error:
        return (f"cannot import the peers from {SITE.relative_to(REPO)} ({error}); run "
                "`bash benchmarks/fetch_peers.sh` again")
    return None


def version(library: str) -> str:
    return metadata.version(library)


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _resnet(arch: str, device: torch.device) -> nn.Module:
    return torchvision.models.get_model(arch, weights=None).to(device)


class _LightlyBYOL(nn.Module):
    """The model of lightly's BYOL example: backbone, projection and prediction heads, and
    frozen momentum copies of the first two."""

    def __init__(self, resnet: nn.Module, hidden: int, dim: int):
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = nn.Sequential(*list(resnet.children())[:-1])
        self.projection_head = BYOLProjectionHead(resnet.fc.in_features, hidden, dim)
        self.prediction_head = BYOLPredictionHead(dim, hidden, dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def forward_momentum(self, x):
        y = self.backbone_momentum(x).flatten(start_dim=1)
        return self.projection_head_momentum(y).detach()


def lightly_step(arch: str, image_size: int, batch_size: int, hidden: int, dim: int,
                 precision: str, device: torch.device, total_steps: int) -> Callable[[], None]:
    """One training step of lightly's BYOL example on two random (batch_size, 3, image_size,
    image_size) views; the momentum follows its cosine schedule over `total_steps`."""
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.utils import update_momentum
    from lightly.utils.scheduler import cosine_schedule

    model = _LightlyBYOL(_resnet(arch, device), hidden, dim).to(device)
    criterion = NegativeCosineSimilarity()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)
    x0, x1 = (torch.randn(batch_size, 3, image_size, image_size, device=device)
              for _ in range(2))
    steps_done = 0

    def step() -> None:
        nonlocal steps_done
        momentum = cosine_schedule(steps_done, total_steps, 0.996, 1)
        update_momentum(model.backbone, model.backbone_momentum, m=momentum)
        update_momentum(model.projection_head, model.projection_head_momentum, m=momentum)
        with _autocast(device, precision):
            p0, z0 = model(x0), model.forward_momentum(x0)
            p1, z1 = model(x1), model.forward_momentum(x1)
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        steps_done += 1

    return step


def byol_pytorch_step(arch: str, image_size: int, batch_size: int, hidden: int, dim: int,
                      precision: str, device: torch.device, total_steps: int
                      ) -> Callable[[], None]:
    """One training step of byol-pytorch's README on random (batch_size, 3, image_size,
    image_size) images in [0, 1), from which the learner draws the two views."""
    from byol_pytorch import BYOL

    learner = BYOL(_resnet(arch, device), image_size=image_size, hidden_layer="avgpool",
                   projection_size=dim, projection_hidden_size=hidden)
    opt = torch.optim.Adam(learner.parameters(), lr=3e-4)
    images = torch.rand(batch_size, 3, image_size, image_size, device=device)

    def step() -> None:
        with _autocast(device, precision):
            loss = learner(images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        learner.update_moving_average()

    return step


STEPS = {"lightly": lightly_step, "byol-pytorch": byol_pytorch_step}
