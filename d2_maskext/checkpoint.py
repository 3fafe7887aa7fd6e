"""Checkpoints that survive a kill in the middle of a save and refuse to run code hidden in a file.

Stock Detectron2 writes ``model_XXXXXXX.pth`` and ``last_checkpoint`` in place: a kill at the wrong moment
leaves a truncated checkpoint or an empty ``last_checkpoint``, and a machine crash can lose data that was
never fsynced. It also unpickles ``.pkl`` model-zoo files with plain ``pickle``, which runs any code the
file names. :class:`SafeCheckpointer` fixes both and is otherwise Detectron2's ``DetectionCheckpointer``.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from torch import nn

from .utils.atomic_file import atomic_open, remove_stale_temp_files

ALLOW_UNSAFE_PICKLE_KEY = "CHECKPOINT.ALLOW_UNSAFE_PICKLE"

# Everything a Detectron2 / Detectron1 / Caffe2 model-zoo ``.pkl`` needs: numpy arrays and scalars (numpy 1.x
# and 2.x module names), ordered dicts, and ``_codecs.encode``, which protocol-2 pickles use for bytes.
_NUMPY_PICKLE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),
    }
)


def _numpy_safe_globals() -> list[Any]:
    """What ``torch.load(weights_only=True)`` must also accept to load ``.pth`` files holding numpy arrays
    (some converted model-zoo weights do): the array/scalar rebuild functions and the numeric dtype classes
    (object dtype excluded)."""
    multiarray = importlib.import_module("numpy._core.multiarray")  # same objects as numpy.core in numpy 1.x
    dtype_classes = [getattr(np.dtypes, n) for n in getattr(np.dtypes, "__all__", ()) if n != "ObjectDType"]
    return [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar, *dtype_classes]


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds Python objects that weights-only loading refuses to rebuild."""


class _AtomicWritePathManager:
    """Detectron2's PathManager, except that writing a local file goes through :func:`atomic_open`.

    fvcore's ``Checkpointer.save`` writes the checkpoint and then ``tag_last_checkpoint`` writes
    ``last_checkpoint``, both through ``self.path_manager.open``; wrapping that one method makes both writes
    atomic, in that order, without re-implementing either.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def open(self, path: str, mode: str = "r", **kwargs: Any) -> Any:
        if "w" in mode and "://" not in path:
            return atomic_open(path, mode)
        return self._inner.open(path, mode, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise UntrustedCheckpointError(f"it references the Python global '{module}.{name}'")


def _refusal(filename: str, reason: str) -> UntrustedCheckpointError:
    return UntrustedCheckpointError(
        f"Refusing to load checkpoint {filename}: {reason}, and unpickling it could run arbitrary code. "
        f"Weights-only loading accepts tensors, numpy arrays, numbers, strings and containers. If you trust "
        f"the file's source, set {ALLOW_UNSAFE_PICKLE_KEY} True (e.g. append "
        f"'{ALLOW_UNSAFE_PICKLE_KEY} True' to the train_net.py command line)."
    )


# Detectron2's name matching for model-zoo files logs every match and every shape mismatch on its own;
# SafeCheckpointer reports the outcome once instead (see LoadReport).
_NAME_MATCHING_LOGGER = "detectron2.checkpoint.c2_model_loading"


def _by_module(keys: Iterable[str], depth: int = 3) -> str:
    """``prefix (number of tensors)`` for the first ``depth`` name parts of the keys' modules."""
    modules = Counter(".".join(k.split(".")[:-1][:depth]) or "(model)" for k in keys)
    return ", ".join(f"{module} ({count})" for module, count in modules.items())


@dataclass(frozen=True)
class LoadReport:
    """What loading a checkpoint did to each tensor of the model's state dict.

    Fine-tuning from a model-zoo checkpoint with another number of classes reshapes the class-dependent
    layers (``cls_score``, ``bbox_pred``, the mask predictor): they are skipped and keep their fresh
    initialisation, like the layers a plugin head adds, which the checkpoint does not have.
    """

    loaded: tuple[str, ...]
    reshaped: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # key, checkpoint shape, model shape
    new: tuple[str, ...]
    unused: tuple[str, ...]
    adapted: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()  # stem weights, see adapt_stem_channels

    @classmethod
    def from_incompatible(
        cls, model_keys: Iterable[str], incompatible: Any, adapted: Iterable[tuple[str, tuple, tuple]] = ()
    ) -> LoadReport:
        """From fvcore's ``_IncompatibleKeys`` (its missing keys include the reshaped ones) and the stem weights
        that :func:`adapt_stem_channels` adapted before loading."""
        reshaped = tuple((k, tuple(ckpt), tuple(model)) for k, ckpt, model in incompatible.incorrect_shapes)
        missing = set(incompatible.missing_keys)
        reshaped_keys = {k for k, _, _ in reshaped}
        return cls(
            loaded=tuple(k for k in model_keys if k not in missing),
            reshaped=reshaped,
            new=tuple(k for k in incompatible.missing_keys if k not in reshaped_keys),
            unused=tuple(incompatible.unexpected_keys),
            adapted=tuple(adapted),
        )

    @property
    def complete(self) -> bool:
        """Every tensor of the model came from the checkpoint and every tensor of the checkpoint was used."""
        return not (self.reshaped or self.new or self.unused or self.adapted)

    def __str__(self) -> str:
        lines = [
            "Model initialised from the checkpoint:",
            f"  loaded, {len(self.loaded)} tensors: {_by_module(self.loaded, depth=2)}",
        ]
        if self.adapted:
            lines.append(
                f"  input channels adapted, {len(self.adapted)} tensors (each of the model's N input channels gets "
                "the mean of the checkpoint's 3 RGB filters times 3/N):"
            )
            lines += [f"    {k}: {ckpt} in the checkpoint, {model} in the model" for k, ckpt, model in self.adapted]
        if self.reshaped:
            lines.append(f"  shape differs, skipped (newly initialised), {len(self.reshaped)} tensors:")
            lines += [f"    {k}: {ckpt} in the checkpoint, {model} in the model" for k, ckpt, model in self.reshaped]
        if self.new:
            lines.append(f"  not in the checkpoint, newly initialised, {len(self.new)} tensors: {_by_module(self.new)}")
        if self.unused:
            lines.append(f"  in the checkpoint, unused by the model, {len(self.unused)} tensors: {_by_module(self.unused)}")
        return "\n".join(lines)


def adapt_stem_channels(model_state: dict[str, torch.Tensor], checkpoint_state: dict[str, Any]) -> list[tuple]:
    """Make 3-channel (RGB/BGR) stem convolutions of a checkpoint fit a model whose stem takes N != 3 channels,
    in place; return ``(key, checkpoint shape, model shape)`` for each adapted tensor.

    Rule: every one of the N input channels gets the mean of the 3 colour filters, scaled by 3/N. An input
    whose N bands all equal a grey value then activates the stem exactly as that grey RGB image did, so the
    pretrained activation scale is kept whatever N is, and no band is favoured (multi-band rasters have no
    natural mapping to R, G and B). Only checkpoint tensors of shape (out, 3, kh, kw) are changed, and only
    when the model has a stem convolution (a 4-D weight named ``*stem*``) of shape (out, N, kh, kw).
    """
    stem_shapes = {
        tuple(v.shape) for k, v in model_state.items() if "stem" in k and v.ndim == 4 and v.shape[1] != 3
    }
    adapted = []
    for key, value in checkpoint_state.items():
        shape = tuple(getattr(value, "shape", ()))
        if len(shape) != 4 or shape[1] != 3:
            continue
        target = next((t for t in stem_shapes if t[:1] + t[2:] == shape[:1] + shape[2:]), None)
        if target is None:
            continue
        weight = torch.as_tensor(value)
        mean = weight.mean(dim=1, keepdim=True) * (3.0 / target[1])
        checkpoint_state[key] = mean.expand(-1, target[1], -1, -1).contiguous()
        adapted.append((key, shape, target))
    return adapted


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Only errors from ``logger_name`` inside the block."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class SafeCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic saves, weights-only loads and one report per load.

    Saves: the checkpoint, then ``last_checkpoint``, are each written with :func:`atomic_open`, so a kill
    at any moment leaves the previous or the new complete file and ``--resume`` never picks a truncated
    one. Resuming deletes temp files left by killed saves.

    Loads: ``.pth`` files go through ``torch.load(weights_only=True)``; ``.pkl`` model-zoo files (pickled
    dicts of numpy arrays) must pass an unpickler that only rebuilds numpy arrays and containers before
    Detectron2 converts them as usual. Anything else raises :class:`UntrustedCheckpointError` naming the
    file, unless ``allow_unsafe_pickle`` (config ``CHECKPOINT.ALLOW_UNSAFE_PICKLE``) declares it trusted.

    Each load logs one :class:`LoadReport`: what was loaded, reshaped and skipped, newly initialised and
    left unused (instead of Detectron2's separate messages for each). A 3-channel stem loaded into a model
    of another input channel count is adapted first (:func:`adapt_stem_channels`) and reported as such.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        allow_unsafe_pickle: bool = False,
        save_to_disk: bool | None = None,
        **checkpointables: Any,
    ) -> None:
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.path_manager = _AtomicWritePathManager(self.path_manager)
        self.allow_unsafe_pickle = allow_unsafe_pickle
        self._adapted_stem: list[tuple] = []  # of the load in progress, for its report

    @classmethod
    def from_config(cls, cfg: CfgNode, model: nn.Module, **checkpointables: Any) -> SafeCheckpointer:
        """Checkpointer saving to ``cfg.OUTPUT_DIR`` with the config's pickle policy."""
        return cls(
            model, cfg.OUTPUT_DIR, allow_unsafe_pickle=cfg.CHECKPOINT.ALLOW_UNSAFE_PICKLE, **checkpointables
        )

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        if resume and self.save_to_disk and self.save_dir and os.path.isdir(self.save_dir):
            removed = remove_stale_temp_files(self.save_dir)
            if removed:
                self.logger.warning(
                    "Removed %d temp file(s) left by interrupted checkpoint saves: %s", len(removed), removed
                )
        return super().resume_or_load(path, resume=resume)

    def _load_file(self, filename: str) -> dict[str, Any]:
        try:
            if filename.endswith(".pkl") and not self.allow_unsafe_pickle:
                self._check_numpy_only_pickle(filename)
            return super()._load_file(filename)
        except UntrustedCheckpointError:
            raise
        except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
            raise RuntimeError(f"Cannot read checkpoint {filename}: {type(e).__name__}: {e}") from e

    def _load_model(self, checkpoint: dict[str, Any]) -> Any:
        self._adapted_stem = adapt_stem_channels(self.model.state_dict(), checkpoint["model"])
        with _quiet(_NAME_MATCHING_LOGGER):
            return super()._load_model(checkpoint)

    def _log_incompatible_keys(self, incompatible: Any) -> None:
        report = LoadReport.from_incompatible(self.model.state_dict().keys(), incompatible, self._adapted_stem)
        self.logger.log(logging.INFO if report.complete else logging.WARNING, str(report))

    def _check_numpy_only_pickle(self, filename: str) -> None:
        """Unpickle with the restricted unpickler; Detectron2 then loads the (now known harmless) file."""
        with self.path_manager.open(filename, "rb") as f:
            try:
                _NumpyOnlyUnpickler(f, encoding="latin1").load()
            except UntrustedCheckpointError as e:
                raise _refusal(filename, str(e)) from None

    def _torch_load(self, f: str) -> Any:
        if self.allow_unsafe_pickle:
            return torch.load(f, map_location="cpu", weights_only=False)
        try:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "weights only" not in str(e).lower():
                raise
            unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            what = f"the Python global '{unsupported[1]}'" if unsupported else "a Python object"
            raise _refusal(f, f"it references {what} that torch.load(weights_only=True) rejects") from None
