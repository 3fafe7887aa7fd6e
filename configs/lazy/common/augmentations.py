"""Training augmentations of the plugin's mappers, as lazy objects (the YAML configs' INPUT.LSJ and
INPUT.PHOTOMETRIC keys)."""

from detectron2.config import LazyCall as L
from detectron2.data import transforms as T

from d2_maskext.data.mappers.photometric import ColorJitter


def lsj_augmentations(size: int, min_scale: float = 0.1, max_scale: float = 2.0, pad_value: float = 128.0) -> list:
    """Large-scale jitter: flip, resize to a random scale of ``size`` x ``size``, crop or pad to it.

    Masks are padded with 0 (FixedSizeCrop's default of 255 would mark the padding as foreground).
    """
    return [
        L(T.RandomFlip)(horizontal=True),
        L(T.ResizeScale)(min_scale=min_scale, max_scale=max_scale, target_height=size, target_width=size),
        L(T.FixedSizeCrop)(crop_size=(size, size), pad_value=pad_value, seg_pad_value=0),
    ]


def photometric_jitter(strength: float = 0.3, hue: float = 0.03, lighting: float = 0.1):
    """Colour jitter with equal brightness, contrast and saturation ranges, for BGR images."""
    return L(ColorJitter)(
        brightness=strength, contrast=strength, saturation=strength, hue=hue, lighting=lighting, image_format="BGR"
    )
