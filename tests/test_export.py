"""Export of the tiny Mask R-CNN to every deployment format, and the runtime that runs the exports.

Each format must give the detections of ``model.inference(..., do_postprocess=False)`` on image sizes other
than the one it was exported with; ONNX must run in onnxruntime with the plugin's op translated to standard
operators; the runtime must load exports without Detectron2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from detectron2.utils.testing import random_boxes
from helpers.train_net_runner import REPO, TINY_CONFIG, shrink_to_tiny, tiny_cfg
from PIL import Image
from torch import Tensor, nn
from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

from d2_maskext.config import add_maskext_config
from d2_maskext.export import ExportedMaskRCNN, MaskRCNNExportAdapter, UnsupportedModelError
from d2_maskext.export.adapter import pooled_mask_layers
from d2_maskext.layers import HAS_C_EXT, FusedROIPooler, roi_align

sys.path.insert(0, str(REPO / "tools"))
import export_model as export_tool  # noqa: E402

onnxruntime = pytest.importorskip("onnxruntime", reason="the optional 'export' extra is not installed")

# Random weights with no score threshold give the tiny model its 10 detections on any image.
TINY_OPTS = ("MODEL.MASKEXT.POOLER", "fused", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
# The export runs at 128 x 128 (the tiny test size); these are checked too.
OTHER_SIZES = [(96, 160), (200, 136), (128, 128)]
FPN_SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
VARIANTS = sorted(p.stem for p in (REPO / "configs" / "synthetic" / "variants").glob("*.yaml"))


def _tiny_model(*opts: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(tiny_cfg(Path("unused"), *TINY_OPTS, *opts)).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save({"model": _tiny_model().state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def model(weights: Path) -> nn.Module:
    model = _tiny_model()
    model.load_state_dict(torch.load(weights)["model"])
    return model


def export_formats(
    weights: Path, output: Path, formats: tuple[str, ...], *flags: str, opts: tuple[str, ...] = ()
) -> dict[str, Path]:
    """One run of ``tools/export_model.py`` writing ``formats`` (one sub-folder of ``output`` each when several)."""
    return export_tool.main(
        ["--config-file", str(TINY_CONFIG), "--format", *formats, "--output", str(output), *flags,
         "MODEL.WEIGHTS", str(weights), *TINY_OPTS, *opts]
    )  # fmt: skip


def run_export_tool(weights: Path, output: Path, fmt: str, *flags: str, opts: tuple[str, ...] = ()) -> Path:
    return export_formats(weights, output, (fmt,), *flags, opts=opts)[fmt]


@pytest.fixture(scope="module")
def exports(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fast formats, exported once for the module by one run of the tool (one folder each)."""
    return export_formats(weights, tmp_path_factory.mktemp("exports"), ("exported_program", "torchscript", "onnx"))


@pytest.fixture(scope="module")
def runtimes(exports: dict[str, Path]) -> dict[str, ExportedMaskRCNN]:
    """Each fast format loaded once for the module by the runtime (an exported program takes seconds to load)."""
    return {fmt: ExportedMaskRCNN(path) for fmt, path in exports.items()}


def reference(model: nn.Module, image: Tensor) -> tuple[Tensor, ...]:
    with torch.no_grad():
        instances = model.inference([{"image": image}], do_postprocess=False)[0]
    return instances.pred_boxes.tensor, instances.scores, instances.pred_classes, instances.pred_masks


def assert_same_detections(got: tuple[Tensor, ...], want: tuple[Tensor, ...]) -> None:
    assert len(want[0]) > 0
    boxes, scores, classes, masks = got
    torch.testing.assert_close(boxes, want[0], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(scores, want[1], rtol=1e-4, atol=1e-5)
    assert torch.equal(classes.long(), want[2])
    torch.testing.assert_close(masks, want[3], rtol=1e-4, atol=1e-4)


def random_image(height: int, width: int) -> Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(height * width)) * 255


# ------------------------------------------------------------------------------------------ adapter
def test_adapter_gives_the_model_detections(model: nn.Module):
    adapter = MaskRCNNExportAdapter(model)
    for size in OTHER_SIZES:
        image = random_image(*size)
        with torch.no_grad():
            assert_same_detections(adapter(image), reference(model, image))


def _variant_model(variant: str) -> nn.Module:
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file(str(REPO / "configs" / "synthetic" / "variants" / f"{variant}.yaml"))
    shrink_to_tiny(cfg)
    cfg.merge_from_list(list(TINY_OPTS))
    torch.manual_seed(0)
    return build_model(cfg).eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_adapter_gives_each_head_variant_detections(variant: str):
    model = _variant_model(variant)
    image = random_image(128, 96)
    with torch.no_grad():
        assert_same_detections(MaskRCNNExportAdapter(model)(image), reference(model, image))


# Mask stages the adapter cannot run without ``Instances``: Mask Scoring rescores in its own ``_forward_mask``, the
# high-resolution head pools its own features.
PADDED_MASK_STAGES = {"hires_mask_head", "mask_scoring"}


@pytest.mark.parametrize("variant", ["stock", *VARIANTS])
def test_mask_head_runs_on_real_detections_where_its_inference_is_standard(variant: str):
    model = _tiny_model() if variant == "stock" else _variant_model(variant)
    layers = pooled_mask_layers(model.roi_heads)
    assert (layers is None) == (variant in PADDED_MASK_STAGES)
    if layers is not None:
        assert layers == model.roi_heads.mask_head.layers


def mask_head_rows(program: torch.export.ExportedProgram) -> int | torch.SymInt:
    """Rows entering the mask head's first weight layer: an int when padded, a SymInt when data-dependent."""
    parameters = program.graph_signature.inputs_to_parameters
    for node in program.graph.nodes:
        if node.op == "call_function" and any(
            getattr(a, "name", None) in parameters and ".mask_head." in parameters[a.name] for a in node.args
        ):
            return node.args[0].meta["val"].shape[0]
    raise AssertionError("no mask head layer in the program")


@pytest.mark.slow
def test_exported_program_runs_an_image_without_detections():
    """torchvision's fake ``nms`` declares at least two kept boxes, which the exported program asserts at run time;
    an image where NMS keeps none (here: no score reaches the threshold) must still give empty detections."""
    model = _tiny_model("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.99")  # random weights score about 1/6
    size = {1: torch.export.Dim("height", min=65, max=4096), 2: torch.export.Dim("width", min=65, max=4096)}
    program = torch.export.export(MaskRCNNExportAdapter(model), (random_image(128, 96),), dynamic_shapes={"image": size})
    image = random_image(100, 150)
    with torch.no_grad():
        got = program.module()(image)
    assert len(reference(model, image)[0]) == 0
    assert [tuple(t.shape[:1]) for t in got] == [(0,)] * 4


@pytest.mark.slow
class TestCompiledExports:
    """The two longest exports. A class of their own: pytest-xdist (``--dist loadscope``) may then run them on
    another worker than the module's tests that share the three-format export."""

    @pytest.mark.parametrize("variant", VARIANTS)
    def test_each_head_variant_exports_with_dynamic_size(self, variant: str):
        model = _variant_model(variant)
        adapter = MaskRCNNExportAdapter(model)
        size = {1: torch.export.Dim("height", min=65, max=4096), 2: torch.export.Dim("width", min=65, max=4096)}
        program = torch.export.export(adapter, (random_image(128, 96),), dynamic_shapes={"image": size})
        image = random_image(100, 150)
        with torch.no_grad():
            assert_same_detections(program.module()(image), reference(model, image))
        rows = mask_head_rows(program)
        if variant in PADDED_MASK_STAGES:
            assert rows == model.roi_heads.box_predictor.test_topk_per_image
        else:
            assert isinstance(rows, torch.SymInt)

    def test_aoti_package_matches_pytorch(self, weights: Path, model: nn.Module, tmp_path: Path):
        # Scalar kernels: Inductor's vectorization analysis under dynamic sizes and gcc on the vectorized code took
        # two thirds of a 3-minute compile; the package, its loading and the plugin's ops are what is tested here.
        # Inductor's cache (its precompiled headers alone are 130 MB each) goes into the test's folder, removed when
        # the test passes, rather than into the shared /tmp/torchinductor_<user> for good.
        with torch._inductor.config.patch({"cpp.simdlen": 1}), temporary_cache_dir(str(tmp_path / "inductor")):
            path = run_export_tool(weights, tmp_path, "aoti")
        exported = ExportedMaskRCNN(path)
        for size in OTHER_SIZES[:2]:
            image = random_image(*size)
            assert_same_detections(exported(image), reference(model, image))


# ------------------------------------------------------------------------------------------ formats
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["exported_program", "torchscript", "onnx"])
def test_export_matches_pytorch_on_other_sizes(
    fmt: str, exports: dict[str, Path], runtimes: dict[str, ExportedMaskRCNN], model: nn.Module
):
    exported = runtimes[fmt]
    metadata = json.loads(exports[fmt].with_suffix(".json").read_text())
    assert metadata["format"] == fmt
    assert [o["name"] for o in metadata["outputs"]] == ["boxes", "scores", "classes", "masks"]
    assert len(metadata["class_names"]) == 5
    for size in OTHER_SIZES:
        image = random_image(*size)
        assert_same_detections(exported(image), reference(model, image))


@pytest.mark.slow
def test_onnx_file_uses_standard_operators_only(exports: dict[str, Path]):
    import onnx

    graph = onnx.load(str(exports["onnx"])).graph
    assert {"RoiAlign", "ScatterND", "NonMaxSuppression"} <= {node.op_type for node in graph.node}
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}
    session = onnxruntime.InferenceSession(str(exports["onnx"]), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"image": random_image(150, 110).numpy()})
    assert [o.shape[0] for o in outputs] == [len(outputs[0])] * 4


@pytest.mark.slow
@pytest.mark.skipif(not HAS_C_EXT, reason="scripting calls the compiled d2_maskext::roi_align op")
def test_scripted_torchscript_matches_pytorch(weights: Path, model: nn.Module, tmp_path: Path):
    path = run_export_tool(weights, tmp_path, "torchscript", "--export-method", "scripting")
    assert json.loads(path.with_suffix(".json").read_text())["export_method"] == "scripting"
    exported = ExportedMaskRCNN(path)
    for size in OTHER_SIZES[:2]:
        image = random_image(*size)
        assert_same_detections(exported(image), reference(model, image))


# ------------------------------------------------------------------------------------------ runtime
@pytest.mark.slow
def test_runtime_pastes_like_detectron2(runtimes: dict[str, ExportedMaskRCNN], model: nn.Module, tmp_path: Path):
    """Full-image results from a file: resized as at test time, boxes scaled back, masks pasted."""
    bgr = (np.random.default_rng(0).random((150, 230, 3)) * 255).astype(np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(bgr[:, :, ::-1].copy()).save(path)
    prediction = runtimes["onnx"].predict_file(path)
    resized = T.ResizeShortestEdge(128, 128).get_transform(bgr).apply_image(bgr)  # the tiny config's test size
    image = torch.from_numpy(resized.transpose(2, 0, 1).copy()).float()
    with torch.no_grad():
        want = model([{"image": image, "height": 150, "width": 230}])[0]["instances"]
    assert prediction.masks.shape == (len(want), 150, 230)
    torch.testing.assert_close(prediction.boxes, want.pred_boxes.tensor, rtol=1e-4, atol=1e-3)
    assert torch.equal(prediction.classes, want.pred_classes)
    mismatch = (prediction.masks != want.pred_masks).float().mean()
    assert mismatch < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["exported_program", "onnx"])
def test_runtime_needs_no_detectron2(fmt: str, exports: dict[str, Path], tmp_path: Path):
    """A fresh process loads the runtime by path and runs the export with torch (and the op) only."""
    image = tmp_path / "image.png"
    Image.fromarray((np.random.default_rng(1).random((120, 170, 3)) * 255).astype(np.uint8)).save(image)
    script = f"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("runtime", {str(REPO / "d2_maskext" / "export" / "runtime.py")!r})
runtime = sys.modules["runtime"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runtime)
prediction = runtime.ExportedMaskRCNN({str(exports[fmt])!r}).predict_file({str(image)!r})
modules = [name for name in ("detectron2", "d2_maskext") if name in sys.modules]
print(json.dumps({{"masks": list(prediction.masks.shape), "dtype": str(prediction.masks.dtype), "modules": modules}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"masks": [10, 120, 170], "dtype": "torch.bool", "modules": []}


# ------------------------------------------------------------------------------------- ONNX pooler
class _PoolFPN(nn.Module):
    """A pooler as a function of tensors, the form the ONNX exporter takes."""

    def __init__(self, pooler: nn.Module):
        super().__init__()
        self.pooler = pooler

    def forward(self, p2: Tensor, p3: Tensor, p4: Tensor, p5: Tensor, boxes: Tensor) -> Tensor:
        return self.pooler([p2, p3, p4, p5], [Boxes(boxes)])


@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign"])
def test_fused_pooler_onnx_equals_roi_pooler(pooler_type: str, tmp_path: Path):
    """The fused pooler's ONNX graph in onnxruntime gives Detectron2's ROIPooler output on random FPN maps."""
    from d2_maskext.export.onnx_translation import ONNX_OPSET, roi_align_translations

    torch.manual_seed(0)
    kwargs = {"output_size": 7, "scales": FPN_SCALES, "sampling_ratio": 0, "pooler_type": pooler_type}
    features = [torch.randn(1, 8, 256 // s, 192 // s) for s in (4, 8, 16, 32)]
    boxes = random_boxes(30, 250)
    num_boxes = torch.export.Dim("num_boxes", min=2)
    program = torch.onnx.export(
        _PoolFPN(FusedROIPooler(**kwargs)), (*features, boxes), dynamo=True, opset_version=ONNX_OPSET,
        custom_translation_table=roi_align_translations(), dynamic_shapes=(None, None, None, None, {0: num_boxes}),
        input_names=["p2", "p3", "p4", "p5", "boxes"], verbose=False,
    )  # fmt: skip
    program.save(str(tmp_path / "pooler.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "pooler.onnx"), providers=["CPUExecutionProvider"])
    stock = _PoolFPN(ROIPooler(**kwargs))
    for count in (30, 3, 80):
        boxes = random_boxes(count, 250)
        feeds = dict(zip(["p2", "p3", "p4", "p5", "boxes"], [t.numpy() for t in (*features, boxes)]))
        got = torch.from_numpy(session.run(None, feeds)[0])
        torch.testing.assert_close(got, stock(*features, boxes), rtol=1e-5, atol=1e-5)


class _SingleLevelRoIAlign(nn.Module):
    def __init__(self, aligned: bool):
        super().__init__()
        self.aligned = aligned

    def forward(self, feature: Tensor, rois: Tensor) -> Tensor:
        return roi_align(feature, rois, (5, 4), spatial_scale=0.25, sampling_ratio=2, aligned=self.aligned)


@pytest.mark.parametrize("aligned", [True, False])
def test_single_level_roi_align_onnx_equals_torchvision(aligned: bool, tmp_path: Path):
    from d2_maskext.export.onnx_translation import ONNX_OPSET, roi_align_translations

    torch.manual_seed(0)
    feature = torch.randn(2, 3, 24, 20)
    rois = torch.cat([torch.randint(0, 2, (9, 1)).float(), random_boxes(9, 90)], dim=1)
    program = torch.onnx.export(
        _SingleLevelRoIAlign(aligned), (feature, rois), dynamo=True, opset_version=ONNX_OPSET,
        custom_translation_table=roi_align_translations(), input_names=["feature", "rois"], verbose=False,
    )  # fmt: skip
    program.save(str(tmp_path / "roi_align.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "roi_align.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"feature": feature.numpy(), "rois": rois.numpy()})[0])
    want = torchvision.ops.roi_align(feature, rois, (5, 4), spatial_scale=0.25, sampling_ratio=2, aligned=aligned)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- bad input
def test_missing_weights_file_is_named(tmp_path: Path):
    with pytest.raises(SystemExit, match="weights file not found: .*nowhere.pth"):
        run_export_tool(tmp_path / "nowhere.pth", tmp_path, "exported_program")


def test_unsupported_roi_heads_are_refused(weights: Path, tmp_path: Path):
    with pytest.raises(UnsupportedModelError, match="CascadeROIHeads.forward replaces it"):
        run_export_tool(weights, tmp_path, "exported_program", opts=("MODEL.ROI_HEADS.NAME", "CascadeROIHeads", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True"))


def test_model_without_masks_is_refused(weights: Path, tmp_path: Path):
    with pytest.raises(UnsupportedModelError, match="MODEL.MASK_ON True"):
        run_export_tool(weights, tmp_path, "exported_program", opts=("MODEL.MASK_ON", "False"))


def test_pooler_without_onnx_translation_is_named(weights: Path, tmp_path: Path):
    opts = ("MODEL.MASKEXT.POOLER", "stock", "MODEL.ROI_MASK_HEAD.POOLER_TYPE", "ROIAlignRotated")
    with pytest.raises(UnsupportedModelError, match="roi_heads.mask_pooler: ROIAlignRotated pooling has no ONNX"):
        run_export_tool(weights, tmp_path, "onnx", opts=opts)


@pytest.mark.slow
def test_image_outside_the_exported_range_is_refused(runtimes: dict[str, ExportedMaskRCNN]):
    exported = runtimes["exported_program"]
    with pytest.raises(ValueError, match=r"image size \[40, 128\] is outside the exported range \[65, 4096\]"):
        exported(random_image(40, 128))


# ------------------------------------------------------------------------------------------ benchmark
@pytest.mark.slow
def test_benchmark_runs_on_two_images(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    """``benchmarks/bench_export.py`` end to end on the tiny model: parity, AP and the latency table."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_export

    # TorchScript, the quickest format to write: each format's parity with eager is tested above.
    bench_export.main(
        ["--config-file", str(TINY_CONFIG), "--weights", str(weights), "--dataset", "maskext_synth_tiny_val",
         "--num-images", "2", "--formats", "torchscript", "--output", str(tmp_path), *TINY_OPTS]
    )  # fmt: skip
    table = capsys.readouterr().out
    assert "| eager fp32 |" in table and "| eager fast settings" in table
    row = next(line for line in table.splitlines() if line.startswith("| torchscript |"))
    assert "| 100.00% |" in row
