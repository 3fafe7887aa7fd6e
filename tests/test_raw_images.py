"""16-bit, float and multi-band images: ``INPUT.FORMAT "RAW"`` from file to model and back to a picture.

Files are written here with known pixels (tifffile, OpenCV, numpy), so every read is checked exactly.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import BoxMode
from detectron2.utils.events import EventStorage
from helpers.train_net_runner import TINY_CONFIG, load_script, tiny_cfg
from PIL import Image

from d2_maskext.checkpoint import SafeCheckpointer
from d2_maskext.data.mappers import ColorJitter, build_mapper
from d2_maskext.data.pixel_stats import compute_pixel_stats
from d2_maskext.data.synthetic import BUILTIN_SYNTHETIC, UINT16_OFFSET, SyntheticSpec, generate_image
from d2_maskext.predict import BatchPredictor, predict
from d2_maskext.utils import image_io
from d2_maskext.utils.image_io import ChannelCountError, ImageReadError, needs_raw, read_image
from d2_maskext.visualization import read_image_or_blank, to_display_rgb

SIZE = 64
BANDS = 5
DATASET = "raw_test_5band"


def _pixels(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "uint16":
        return rng.integers(0, 60000, size=shape).astype(np.uint16)
    return (rng.normal(size=shape) * 1000).astype(np.float32)


def _write(path: Path, array: np.ndarray) -> Path:
    if path.suffix == ".npy":
        np.save(path, array)
    elif path.suffix == ".png":
        cv2.imwrite(str(path), array[:, :, ::-1] if array.ndim == 3 else array)  # OpenCV writes BGR
    else:
        tifffile.imwrite(path, array, photometric="minisblack", planarconfig="contig" if array.ndim == 3 else None)
    return path


@pytest.mark.parametrize(
    ("name", "shape", "dtype"),
    [
        ("u16.tif", (SIZE, SIZE + 3), "uint16"),
        ("f32.tif", (SIZE, SIZE + 3), "float32"),
        ("bands.tif", (SIZE, SIZE + 3, BANDS), "uint16"),
        ("grey16.png", (SIZE, SIZE + 3), "uint16"),
        ("rgb16.png", (SIZE, SIZE + 3, 3), "uint16"),
        ("bands.npy", (SIZE, SIZE + 3, 2), "float32"),
    ],
)
def test_raw_reads_every_file_type_exactly(tmp_path, name: str, shape: tuple[int, ...], dtype: str):
    array = _pixels(shape, dtype)
    image = read_image(_write(tmp_path / name, array), "RAW")
    expected = array.reshape(SIZE, SIZE + 3, -1).astype(np.float32)
    assert image.dtype == np.float32 and image.shape == expected.shape and image.flags.c_contiguous
    np.testing.assert_array_equal(image, expected)
    assert needs_raw(tmp_path / name)
    # Dataset registration and validation measure the same file (multi-band TIFF and .npy included).
    assert image_io.image_size(tmp_path / name) == image_io.decoded_size(tmp_path / name) == (SIZE, SIZE + 3)


def test_raw_reads_planar_tiff_bands_last(tmp_path):
    planar = _pixels((BANDS, SIZE, SIZE), "uint16")
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="minisblack", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif", "RAW"), np.moveaxis(planar, 0, -1))


@pytest.mark.parametrize("name", ["big.tif", "big.npy", "big.png"])
def test_raw_honours_the_decompression_bomb_limit(tmp_path, monkeypatch, name: str):
    path = _write(tmp_path / name, np.zeros((SIZE, SIZE), np.uint16))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", SIZE * SIZE // 4)
    with pytest.raises(ImageReadError, match="decompression bomb") as error:
        read_image(path, "RAW")
    assert str(path) in str(error.value)


def test_raw_errors_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="file not found") as missing:
        read_image(tmp_path / "absent.tif", "RAW")
    assert missing.value.missing and str(tmp_path / "absent.tif") in str(missing.value)
    (tmp_path / "broken.npy").write_bytes(b"not an array")
    with pytest.raises(ImageReadError, match="broken.npy: cannot decode"):
        read_image(tmp_path / "broken.npy", "RAW")


def test_8bit_format_warns_once_with_dtype_and_range(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(image_io, "_lossy_read_warned", False)
    first = _write(tmp_path / "a.png", np.full((8, 8), 59000, np.uint16))
    second = _write(tmp_path / "b.png", np.full((8, 8), 1000, np.uint16))
    ordinary = tmp_path / "photo.png"
    cv2.imwrite(str(ordinary), np.zeros((8, 8, 3), np.uint8))
    with caplog.at_level(logging.WARNING, logger="d2_maskext.utils.image_io"):
        assert read_image(ordinary, "BGR").dtype == np.uint8
        assert not caplog.records
        clipped = read_image(first, "BGR")
        read_image(second, "RGB")
    assert (clipped == 255).all()  # what an 8-bit format does to 16-bit pixels
    (warning,) = caplog.records
    message = warning.getMessage()
    assert str(first) in message and "uint16" in message and "59000 to 59000" in message and "'RAW'" in message
    assert not needs_raw(ordinary)


def test_multiband_tiff_under_8bit_format_suggests_raw(tmp_path, monkeypatch):
    monkeypatch.setattr(image_io, "_lossy_read_warned", True)  # the warning was given earlier in the run
    path = _write(tmp_path / "bands.tif", _pixels((8, 8, BANDS), "float32"))
    with pytest.raises(ImageReadError, match="INPUT.FORMAT 'RAW'") as error:
        read_image(path, "BGR")
    assert str(path) in str(error.value)


# ------------------------------------------------------------------------------------------------ mappers
@pytest.fixture(scope="module")
def raw_dataset(tmp_path_factory) -> list[dict]:
    """Two 5-band float images with values far outside 0-255, one square instance each, registered."""
    root = tmp_path_factory.mktemp("raw")
    records = []
    for index in range(2):
        image = _pixels((SIZE, SIZE, BANDS), "float32", seed=index) + 20000
        path = _write(root / f"{index}.tif", image)
        square = [16.0, 16.0, 40.0, 16.0, 40.0, 40.0, 16.0, 40.0]
        annotation = {"bbox": [16, 16, 24, 24], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "segmentation": [square]}
        records.append({"file_name": str(path), "image_id": index, "height": SIZE, "width": SIZE, "annotations": [annotation]})
    if DATASET not in DatasetCatalog.list():
        DatasetCatalog.register(DATASET, lambda: records)
        MetadataCatalog.get(DATASET).set(thing_classes=["square"])
    return records


def raw_cfg(tmp_path: Path, *opts: str, bands: int = BANDS):
    mean, std = str([20000.0 + b for b in range(bands)]), str([1000.0] * bands)
    return tiny_cfg(
        tmp_path, "INPUT.FORMAT", "RAW", "MODEL.PIXEL_MEAN", mean, "MODEL.PIXEL_STD", std,
        "DATASETS.TRAIN", f"('{DATASET}',)", "MODEL.ROI_HEADS.NUM_CLASSES", "1", *opts,
    )  # fmt: skip


@pytest.mark.parametrize("mapper", ["MaskExtDatasetMapper", "LSJDatasetMapper", "CopyPasteDatasetMapper"])
def test_every_plugin_mapper_keeps_raw_bands_and_values(tmp_path, raw_dataset, mapper: str):
    cfg = raw_cfg(
        tmp_path, "INPUT.MAPPER.NAME", mapper, "INPUT.PHOTOMETRIC.ENABLED", "True", "INPUT.LSJ.IMAGE_SIZE", "96",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "200",
    )  # fmt: skip
    np.random.seed(0)
    out = build_mapper(cfg, is_train=True)(dict(raw_dataset[0]))
    image = out["image"]
    assert image.dtype == torch.float32 and tuple(image.shape) == (BANDS, 96, 96)  # resized (>4 float bands)
    assert image.max() > 10000  # not clipped to 8 bits
    assert len(out["instances"]) >= 1 and out["instances"].gt_masks.tensor.shape[-2:] == (96, 96)


def test_lsj_pads_each_band_with_its_pixel_mean(tmp_path, raw_dataset):
    cfg = raw_cfg(
        tmp_path, "INPUT.MAPPER.NAME", "LSJDatasetMapper", "INPUT.LSJ.IMAGE_SIZE", "128", "INPUT.LSJ.MIN_SCALE", "0.25",
        "INPUT.LSJ.MAX_SCALE", "0.25", "INPUT.RANDOM_FLIP", "none",
    )  # fmt: skip
    image = build_mapper(cfg, is_train=True)(dict(raw_dataset[0]))["image"]
    assert tuple(image.shape) == (BANDS, 128, 128)
    padding = image[:, 64:, :].reshape(BANDS, -1)
    assert torch.equal(padding, torch.tensor(cfg.MODEL.PIXEL_MEAN)[:, None].expand_as(padding))


def test_photometric_jitter_on_raw_bands():
    np.random.seed(0)
    image = _pixels((8, 8, BANDS), "float32") + 30000
    jitter = ColorJitter(brightness=0.5, contrast=0.0, saturation=0.5, hue=0.1, lighting=0.1, image_format="RAW")
    out = jitter.get_transform(image).apply_image(image)
    ratio = out / image
    assert out.dtype == np.float32 and np.allclose(ratio, ratio.flat[0], rtol=1e-5) and ratio.flat[0] != 1.0
    rgb = image[:, :, :3]
    hue_only = ColorJitter(hue=0.2, image_format="RAW").get_transform(rgb).apply_image(rgb)
    assert hue_only.max() > 255 and not np.allclose(hue_only, rgb)  # colour rotated, not clipped to 8 bits


def test_raw_channel_mismatch_and_stock_mapper_are_refused(tmp_path, raw_dataset):
    cfg = raw_cfg(tmp_path, bands=3)
    with pytest.raises(ChannelCountError, match=r"0\.tif: the image has 5 channel\(s\) but the model takes 3"):
        build_mapper(cfg, is_train=True)(dict(raw_dataset[0]))
    with pytest.raises(ValueError, match="DatasetMapper reads 8-bit images only"):
        build_mapper(raw_cfg(tmp_path, "INPUT.MAPPER.NAME", "DatasetMapper"), is_train=True)


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("bands", [1, BANDS])
def test_rgb_stem_is_adapted_to_n_channels_and_reported(tmp_path, bands: int, caplog):
    torch.manual_seed(0)
    state = build_model(tiny_cfg(tmp_path)).state_dict()
    path = tmp_path / "zoo.pkl"
    with path.open("wb") as f:
        arrays = {k: v.numpy() for k, v in state.items()}
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}, f)
    model = build_model(raw_cfg(tmp_path, "MODEL.ROI_HEADS.NUM_CLASSES", "5", bands=bands))
    with caplog.at_level(logging.INFO):
        SafeCheckpointer(model).load(str(path))
    key = "backbone.bottom_up.stem.conv1.weight"
    rgb = state[key]
    expected = (rgb.mean(dim=1, keepdim=True) * 3 / bands).expand(-1, bands, -1, -1)
    torch.testing.assert_close(model.state_dict()[key], expected)
    # A grey input activates the adapted stem as the RGB stem: the filters summed over channels agree.
    torch.testing.assert_close(model.state_dict()[key].sum(dim=1), rgb.sum(dim=1))
    (report,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Model initialised")]
    assert "input channels adapted, 1 tensors" in report
    assert f"{key}: {tuple(rgb.shape)} in the checkpoint, {tuple(expected.shape)} in the model" in report


# --------------------------------------------------------------------------------------- statistics, display
def test_compute_pixel_stats_streams_exact_per_channel_values(tmp_path):
    images = [_pixels((10 + i, 12, 2), "uint16", seed=i) for i in range(3)]
    files = [str(_write(tmp_path / f"{i}.tif", image)) for i, image in enumerate(images)]
    stats = compute_pixel_stats([*files, str(tmp_path / "missing.tif")], "RAW")
    pixels = np.concatenate([i.reshape(-1, 2) for i in images]).astype(np.float64)
    np.testing.assert_allclose(stats.mean, pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, pixels.std(axis=0), rtol=1e-9)
    assert stats.num_images == 3 and stats.num_pixels == len(pixels) and len(stats.skipped) == 1
    parsed = yaml.safe_load(stats.yaml())["MODEL"]
    np.testing.assert_allclose(parsed["PIXEL_MEAN"], stats.mean, rtol=1e-5)
    assert all(isinstance(v, float) for v in parsed["PIXEL_STD"])


def test_compute_pixel_stats_tool_prints_yaml(tmp_path, capsys):
    tool = load_script("tools/compute_pixel_stats.py")
    output = tool.main([
        "--config-file", str(TINY_CONFIG), "--dataset", "maskext_synth_tiny_val_u16", "--max-images", "3",
        "INPUT.FORMAT", "RAW", "OUTPUT_DIR", str(tmp_path),
    ])  # fmt: skip
    model = yaml.safe_load(output)["MODEL"]
    assert len(model["PIXEL_MEAN"]) == 1 and UINT16_OFFSET < model["PIXEL_MEAN"][0] < 59000
    assert "3 images of maskext_synth_tiny_val_u16" in capsys.readouterr().out


def test_to_display_rgb_stretches_percentiles():
    ramp = np.linspace(1000, 61000, 101 * 40, dtype=np.float32).reshape(101, 40)
    bands = np.stack([ramp, ramp[::-1], ramp * 0 + 5, ramp * 2], axis=2)
    shown = to_display_rgb(bands)
    assert shown.dtype == np.uint8 and shown.shape == (101, 40, 3)
    assert shown[0, 0, 0] == 0 and shown[-1, -1, 0] == 255 and shown[0, 0, 1] == 255  # 1st-99th percentile
    assert (shown[:, :, 2] == 0).all()  # a constant band shows black, not noise
    grey = to_display_rgb(bands, bands=3)
    assert (grey[:, :, 0] == grey[:, :, 2]).all() and grey[-1, -1, 0] == 255
    assert to_display_rgb(ramp).shape == (101, 40, 3)
    with pytest.raises(ValueError, match="band 7 does not exist"):
        to_display_rgb(bands, bands=7)


def test_report_panels_show_raw_files_stretched(tmp_path):
    path = _write(tmp_path / "scan.tif", np.linspace(0, 60000, 64, dtype=np.float32).reshape(8, 8).astype(np.uint16))
    image, found = read_image_or_blank(path, 8, 8)
    assert found and image.dtype == np.uint8 and image.shape == (8, 8, 3) and image.max() == 255 and image.min() == 0


def test_synthetic_uint16_images_share_the_scenes_of_the_8bit_ones():
    spec = BUILTIN_SYNTHETIC["maskext_synth_tiny_train_u16"]
    image, annotations = generate_image(spec, 0)
    rgb8, annotations8 = generate_image(SyntheticSpec(**{**spec.__dict__, "pixel_dtype": "uint8", "bands": 3}), 0)
    assert image.dtype == np.uint16 and image.shape == (128, 128) and rgb8.dtype == np.uint8
    assert image.min() >= UINT16_OFFSET and image.max() > 30000
    assert all(np.array_equal(a["mask"], b["mask"]) for a, b in zip(annotations, annotations8))
    assert spec.cache_name().endswith("_uint16_b1") and "pixel_dtype" not in BUILTIN_SYNTHETIC["maskext_synth_tiny_train"].info()


# ------------------------------------------------------------------------------------------------ model
@pytest.mark.slow
def test_tiny_16bit_model_trains_a_step_and_predicts(tmp_path, caplog):
    cfg = tiny_cfg(
        tmp_path, "INPUT.FORMAT", "RAW", "MODEL.PIXEL_MEAN", "[25000.0]", "MODEL.PIXEL_STD", "[9000.0]",
        "DATASETS.TRAIN", "('maskext_synth_tiny_train_u16',)",
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.backbone.bottom_up.stem.conv1.weight.shape[1] == 1
    mapper = build_mapper(cfg, is_train=True)
    batch = [mapper(dict(r)) for r in DatasetCatalog.get("maskext_synth_tiny_train_u16")[:2]]
    assert batch[0]["image"].shape[0] == 1 and batch[0]["image"].max() > 255
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001)
    with EventStorage(0):
        total = sum(model(batch).values())
    assert torch.isfinite(total)
    total.backward()
    optimizer.step()

    predictor = BatchPredictor(model, T.ResizeShortestEdge([128, 128], 128), "RAW")
    image = read_image(DatasetCatalog.get("maskext_synth_tiny_train_u16")[0]["file_name"], "RAW")
    assert predictor(image)["instances"].image_size == (128, 128)
    metadata = MetadataCatalog.get("maskext_synth_tiny_train_u16")
    summary = predict(predictor, metadata, [DatasetCatalog.get("maskext_synth_tiny_train_u16")[0]["file_name"]], tmp_path)
    overlay = cv2.imread(str(summary.overlays / "000000.png"))
    assert summary.num_images == 1 and overlay.shape == (128, 128, 3) and overlay.max() > 200  # stretched, not black
    two_band = _write(tmp_path / "two.tif", np.zeros((32, 32, 2), np.uint16))
    with pytest.raises(ChannelCountError, match=r"two\.tif: the image has 2 channel\(s\) but the model takes 1"):
        predict(predictor, metadata, [str(two_band)], tmp_path / "other")


def test_training_images_of_raw_input_are_stretched_or_refused(tmp_path):
    """``VIS_PERIOD`` with RAW: ``MaskExtRCNN`` draws the stretched image; a meta-architecture that would draw
    8-bit images only is refused when the training mapper is built, naming the keys."""
    opts = ["INPUT.FORMAT", "RAW", "MODEL.PIXEL_MEAN", "[25000.0]", "MODEL.PIXEL_STD", "[9000.0]", "VIS_PERIOD", "1",
            "DATASETS.TRAIN", "('maskext_synth_tiny_train_u16',)"]  # fmt: skip
    with pytest.raises(ValueError, match="VIS_PERIOD 1 with INPUT.FORMAT 'RAW'.*MaskExtRCNN"):
        build_mapper(tiny_cfg(tmp_path, *opts), is_train=True)
    cfg = tiny_cfg(tmp_path, *opts, "MODEL.META_ARCHITECTURE", "MaskExtRCNN")
    mapper = build_mapper(cfg, is_train=True)
    batch = [mapper(dict(r)) for r in DatasetCatalog.get("maskext_synth_tiny_train_u16")[:2]]
    torch.manual_seed(0)
    with EventStorage(0) as storage:
        build_model(cfg)(batch)
    (name, image, _), *_ = [entry for entry in storage._vis_data if "proposals" in entry[0]]
    assert image.shape[0] == 3 and image.shape[1] == 128 and 100 < image.mean() < 200  # stretched, not white
