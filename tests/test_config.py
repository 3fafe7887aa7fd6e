"""Plugin config keys, their defaults, and registration of every component on import."""

from __future__ import annotations

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import ROI_HEADS_REGISTRY
from packaging.version import Version

import d2_maskext
from d2_maskext.config import add_maskext_config
from d2_maskext.data.mappers import MAPPER_REGISTRY
from d2_maskext.data.synthetic import BUILTIN_SYNTHETIC, SYNTHETIC_CLASSES


def test_add_config_sets_defaults_and_leaves_global_defaults_alone():
    cfg = add_maskext_config(get_cfg())
    assert cfg.MODEL.MASKEXT.POOLER == "stock"
    assert cfg.INPUT.MAPPER.NAME == "MaskExtDatasetMapper"
    assert "MASKEXT" not in get_cfg().MODEL, "Detectron2's global defaults must not change"
    assert add_maskext_config(cfg) is cfg  # idempotent
    assert "MASKEXT_CONFIG" not in cfg.dump(), "no bookkeeping key in dumped configs"


def test_stock_defaults_are_unchanged_by_plugin_keys():
    stock, ours = get_cfg(), add_maskext_config(get_cfg())
    for key in ("ROI_HEADS", "ROI_BOX_HEAD", "ROI_MASK_HEAD", "RPN", "FPN", "RESNETS"):
        for sub, value in stock.MODEL[key].items():
            assert ours.MODEL[key][sub] == value, f"MODEL.{key}.{sub} changed"


def test_import_registers_components():
    assert Version(d2_maskext.DETECTRON2_VERSION) >= Version("0.6")
    assert "MaskExtROIHeads" in ROI_HEADS_REGISTRY
    assert "StandardROIHeads" in ROI_HEADS_REGISTRY
    assert "DatasetMapper" in MAPPER_REGISTRY
    for name, spec in BUILTIN_SYNTHETIC.items():
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).thing_classes == list(spec.classes)
    assert MetadataCatalog.get("maskext_synth_val").thing_classes == list(SYNTHETIC_CLASSES)
