"""BYOL's asymmetric two-view augmentations: their numbers, shared by the DALI pipeline
(`byol.data.dali`) and its tests.

Order and numbers from the paper: random resized crop (area 0.08-1, aspect 3/4-4/3, bicubic),
flip p=0.5, color jitter p=0.8 (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1; the
paper draws their order per sample, the DALI pipeline fixes it, see `_color_jitter`),
grayscale p=0.2,
gaussian blur (sigma 0.1-2.0, kernel ~10% of the size) p=1.0 for view 1 and 0.1 for view 2,
solarize at 0.5 p=0.0 for view 1 and 0.2 for view 2, then normalization with the ImageNet mean
and std.
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (blur probability, solarize probability) per view.
VIEW_PROBABILITIES = ((1.0, 0.0), (0.1, 0.2))


def blur_kernel_size(image_size: int) -> int:
    """The odd kernel size nearest to 10% of the image side, at least 3."""
    size = max(3, round(0.1 * image_size))
    return size if size % 2 == 1 else size + 1
