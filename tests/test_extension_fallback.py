"""Without the compiled ``_C`` the package still imports, warns once, and runs in pure PyTorch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.slow
def test_import_without_compiled_extension_warns_and_works():
    script = textwrap.dedent(
        """
        import sys, warnings
        sys.modules["d2_maskext._C"] = None  # makes `from d2_maskext import _C` raise ImportError
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import d2_maskext
            from d2_maskext.layers import HAS_C_EXT
        ours = [w for w in caught if "d2_maskext._C" in str(w.message)]
        assert not HAS_C_EXT
        assert len(ours) == 1, [str(w.message) for w in caught]
        assert "falls back to pure PyTorch" in str(ours[0].message)

        import torch
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model
        cfg = d2_maskext.add_maskext_config(get_cfg())
        cfg.merge_from_file("configs/synthetic/Base-Synthetic-R18-GN.yaml")
        cfg.merge_from_list(["MODEL.MASKEXT.POOLER", "fused", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64"])
        model = build_model(cfg).eval()
        with torch.no_grad():
            model([{"image": torch.zeros(3, 64, 64)}])
        print("OK")
        """
    )
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")


def test_kernel_device_types_lists_only_registered_backends():
    import torch

    from d2_maskext.layers._ext import kernel_device_types

    with torch.library._scoped_library("d2mx_test_devices", "DEF") as lib:
        lib.define("cpu_only(Tensor x) -> Tensor")
        lib.impl("cpu_only", lambda x: x.clone(), "CPU")
        assert kernel_device_types("d2mx_test_devices::cpu_only") == {"cpu"}


def test_devices_without_a_kernel_take_the_pytorch_path(monkeypatch):
    import importlib

    import torch

    from d2_maskext.layers import HAS_C_EXT, roi_align
    from d2_maskext.layers._ext import ROI_ALIGN_DEVICE_TYPES

    roi_align_module = importlib.import_module("d2_maskext.layers.roi_align")

    if HAS_C_EXT:
        assert {"cpu", "meta"} <= ROI_ALIGN_DEVICE_TYPES
    calls = []
    reference = roi_align_module.reference_roi_align

    def recording_reference(*args, **kwargs):
        calls.append(args[0][0].device.type)
        return reference(*args, **kwargs)

    monkeypatch.setattr(roi_align_module, "reference_roi_align", recording_reference)
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    rois = torch.tensor([[0, 0.5, 1.0, 4.0, 5.5]], dtype=torch.float64)
    expected = roi_align(x, rois, 2, 1.0, 0, True)
    assert calls == ([] if HAS_C_EXT else ["cpu"])
    # As for a `_C` built without CUDA kernels receiving CUDA tensors.
    monkeypatch.setattr(roi_align_module, "ROI_ALIGN_DEVICE_TYPES", ROI_ALIGN_DEVICE_TYPES - {"cpu"})
    torch.testing.assert_close(roi_align(x, rois, 2, 1.0, 0, True), expected, rtol=1e-12, atol=1e-12)
    assert calls[-1] == "cpu"
