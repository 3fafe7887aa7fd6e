"""Without the compiled ``_C`` the package still imports, warns once, and runs in pure PyTorch."""

from __future__ import annotations

import subprocess
import sys
import textwrap


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
