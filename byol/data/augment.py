"""BYOL's asymmetric two-view augmentations, per sample, with torchvision.transforms.v2.

Order and numbers from the paper: random resized crop (area 0.08-1, aspect 3/4-4/3), flip
p=0.5, color jitter p=0.8 (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, applied in
a random order), grayscale p=0.2, gaussian blur (sigma 0.1-2.0, kernel ~10% of the size) p=1.0
for view 1 and 0.1 for view 2, solarize at 0.5 p=0.0 for view 1 and 0.2 for view 2, then
normalization with the ImageNet mean and std.
"""

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (blur probability, solarize probability) per view.
VIEW_PROBABILITIES = ((1.0, 0.0), (0.1, 0.2))


def blur_kernel_size(image_size: int) -> int:
    """The odd kernel size nearest to 10% of the image side, at least 3."""
    size = max(3, round(0.1 * image_size))
    return size if size % 2 == 1 else size + 1


def byol_view_transform(image_size: int, view: int) -> v2.Compose:
    """uint8 (3, H, W) image -> normalized float32 (3, image_size, image_size) view 1 or 2."""
    blur_p, solarize_p = VIEW_PROBABILITIES[view - 1]
    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                             antialias=True),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2,
                                       hue=0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(blur_kernel_size(image_size), sigma=(0.1, 2.0))],
                       p=blur_p),
        v2.RandomSolarize(threshold=128, p=solarize_p),  # 0.5 of the uint8 range
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
