"""The demo with Simple Copy-Paste on top of large-scale jitter (lazy twin of
configs/synthetic/mapper_copy_paste.yaml): each training image receives the instances of another one."""

from detectron2.config import LazyCall as L
from detectron2.data import DatasetFromList, get_detection_dataset_dicts

from d2_maskext.data.mappers import CopyPasteDatasetMapper

from .mapper_lsj import dataloader, lr_multiplier, model, optimizer, train

dataloader.train.mapper._target_ = CopyPasteDatasetMapper
# The images to paste from: the training set, serialized like Detectron2's so loader workers share it.
dataloader.train.mapper.paste_source = L(DatasetFromList)(
    lst=L(get_detection_dataset_dicts)(names="${....dataset.names}", filter_empty=True), copy=False, serialize=True
)
dataloader.train.mapper.paste_prob = 1.0  # INPUT.COPY_PASTE.PROB
train.output_dir = "output/mapper_copy_paste_lazy"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
