"""Weight files: known names, the three formats we read, and the project's own checkpoint.

Formats read as they are:
- pytorch-AdaIN's `vgg_normalised.pth` and `decoder.pth` (state dicts of its nn.Sequentials);
- torchvision's `vgg19` ImageNet state dict (`features.N.weight`), with ImageNet
  normalisation folded into the encoder's 1x1 input conv;
- adain-ray checkpoints: the state dict plus metadata (architecture, encoder identity,
  training config, sha256 of the weights).
Everything is loaded with `torch.load(weights_only=True)`: a checkpoint is data, never code.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.errors import WeightsError
from pipeline.model.nets import ARCH_VERSION, Decoder, Encoder
from pipeline.model.sources import DEFAULT_DECODER, DEFAULT_ENCODER, weight_uri
from pipeline.storage.cache import fetch, forget
from pipeline.storage.uri import write_bytes

FORMAT = "adain-ray.checkpoint"
FORMAT_VERSION = 1


# torchvision vgg19 `features` conv indices -> our Encoder's conv indices, up to conv4_1.
_TORCHVISION_TO_ENCODER = dict(zip((0, 2, 5, 7, 10, 12, 14, 16, 19), (2, 5, 9, 12, 16, 19, 22, 25, 29), strict=True))
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Weights:
    """A loaded network with its identity (sha256 of its weights) and metadata."""

    module: nn.Module
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)


def state_sha256(state: dict[str, Tensor]) -> str:
    """Identity of a set of weights: independent of the file format they came in."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _read(ref: str, flag: str) -> Any:
    uri, digest = weight_uri(ref)
    path = fetch(uri, digest, flag=flag)
    with open(path, "rb") as handle:
        magic = handle.read(4)
    # torch.save writes a zip archive; older files are a bare pickle (protocol 2+).
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
        raise _unreadable(ref, path, f"it starts with {magic!r}")
    try:
        if magic.startswith(b"PK"):
            _check_expansion(path, ref)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{ref}: refused to load: the file holds more than tensors (code or custom objects); "
            "only plain state dicts and adain-ray checkpoints are loaded"
        ) from exc
    except WeightsError:
        raise
    except Exception as exc:  # a damaged archive fails in many ways, none of them the user's code
        raise _unreadable(ref, path, (str(exc).strip().splitlines() or [type(exc).__name__])[0]) from exc


def _unreadable(ref: str, path: Path, reason: str) -> WeightsError:
    """A file that is no weights; a downloaded one leaves the cache, so the next run fetches it again."""
    dropped = "; removed from the cache: the next run downloads it again" if forget(path) else ""
    return WeightsError(f"{ref}: not a readable PyTorch weight file ({reason}){dropped}")


def _check_expansion(path: Path, ref: str) -> None:
    """torch.save stores tensors uncompressed: an archive that inflates to much more than its size
    is crafted to exhaust memory, which torch.load(weights_only=True) does not bound."""
    with zipfile.ZipFile(path) as archive:
        inflated = sum(info.file_size for info in archive.infolist())
    size = path.stat().st_size
    if inflated > 2 * size + (1 << 20):
        raise WeightsError(
            f"{ref}: refused to load: its archive inflates to {inflated / 1e6:,.0f} MB from {size / 1e6:,.1f} MB "
            "(torch.save stores tensors uncompressed); the file is crafted or damaged"
        )


def _ours(obj: Any, kind: str, ref: str) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    if not (isinstance(obj, dict) and obj.get("format") == FORMAT):
        return None
    if obj.get("kind") != kind:
        raise WeightsError(f"{ref}: an adain-ray {obj.get('kind')} checkpoint, not a {kind}")
    if obj.get("arch") != ARCH_VERSION:
        raise WeightsError(f"{ref}: architecture {obj.get('arch')!r} is not {ARCH_VERSION!r}; upgrade adain-ray")
    state, meta = obj.get("state_dict"), obj.get("meta", {})
    if not _is_state_dict(state) or not isinstance(meta, dict):
        raise WeightsError(f"{ref}: a damaged adain-ray checkpoint (its state_dict or meta is not what it should be)")
    meta = dict(meta)
    if meta.get("weights_sha256") not in (None, state_sha256(state)):
        raise WeightsError(
            f"{ref}: the weights do not match the checksum recorded in the checkpoint; the file is corrupt"
        )
    return state, meta


def _is_state_dict(obj: Any) -> bool:
    """Names to dense tensors: sparse or quantized ones are no weights of these networks."""
    return isinstance(obj, dict) and all(
        isinstance(k, str) and isinstance(v, Tensor) and v.layout == torch.strided and not v.is_quantized
        for k, v in obj.items()
    )


def _module_index(key: str) -> int:
    """The nn.Sequential index a state-dict key starts with ('12.weight' -> 12); -1 for others,
    which `load_state_dict` then refuses by name."""
    head = key.split(".", 1)[0]
    return int(head) if head.isdigit() else -1


def _encoder_state(obj: Any, ref: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    ours = _ours(obj, "encoder", ref)
    if ours is not None:
        return ours
    if _is_state_dict(obj) and "features.0.weight" in obj:  # torchvision vgg19
        missing = [
            i for i in _TORCHVISION_TO_ENCODER if not {f"features.{i}.{p}" for p in ("weight", "bias")} <= obj.keys()
        ]
        if missing or obj["features.19.weight"].shape != (512, 256, 3, 3):
            index = missing[0] if missing else 19
            raise WeightsError(
                f"{ref}: a torchvision VGG state dict but not vgg19 (features.{index} is not its conv); "
                "use torchvision's vgg19 ImageNet weights"
            )
        state = {}
        for tv_index, index in _TORCHVISION_TO_ENCODER.items():
            state[f"{index}.weight"] = obj[f"features.{tv_index}.weight"]
            state[f"{index}.bias"] = obj[f"features.{tv_index}.bias"]
        std, mean = torch.tensor(_IMAGENET_STD), torch.tensor(_IMAGENET_MEAN)
        state["0.weight"] = torch.diag(1.0 / std).view(3, 3, 1, 1)
        state["0.bias"] = -mean / std
        return state, {"source_format": "torchvision-vgg19"}
    if _is_state_dict(obj) and tuple(obj.get("0.weight", torch.empty(0)).shape) == (3, 3, 1, 1):
        # pytorch-AdaIN's vgg_normalised.pth runs to relu5_4; the encoder uses modules 0..30.
        state = {k: v for k, v in obj.items() if _module_index(k) < 31}
        return state, {"source_format": "pytorch-adain-vgg"}
    raise WeightsError(
        f"{ref}: not an encoder weight file; expected pytorch-AdaIN's vgg_normalised.pth, "
        "torchvision's vgg19 state dict or an adain-ray encoder checkpoint"
    )


def _decoder_state(obj: Any, ref: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    ours = _ours(obj, "decoder", ref)
    if ours is not None:
        return ours
    if _is_state_dict(obj) and tuple(obj.get("1.weight", torch.empty(0)).shape) == (256, 512, 3, 3):
        return dict(obj), {"source_format": "pytorch-adain-decoder"}
    raise WeightsError(
        f"{ref}: not a decoder weight file; expected pytorch-AdaIN's decoder.pth or an adain-ray decoder checkpoint"
    )


def _build(module: nn.Module, state: dict[str, Tensor], meta: dict[str, Any], ref: str) -> Weights:
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise WeightsError(f"{ref}: the weights do not fit the AdaIN architecture ({_first_mismatch(exc)})") from exc
    if not all(torch.isfinite(t).all() for t in module.state_dict().values()):
        raise WeightsError(f"{ref}: the weights hold NaN or inf values; the file is damaged, or training diverged")
    module.eval()
    return Weights(module, state_sha256(module.state_dict()), meta)


def _first_mismatch(exc: Exception) -> str:
    """load_state_dict's first complaint (a missing key, a size mismatch), without its heading line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    first = lines[0] if lines else type(exc).__name__
    return first if len(first) <= 200 else first[:199] + "…"


def load_encoder(ref: str = DEFAULT_ENCODER) -> Weights:
    state, meta = _encoder_state(_read(ref, "--encoder"), ref)
    return _build(Encoder(), state, meta, ref)


def load_decoder(ref: str = DEFAULT_DECODER) -> Weights:
    state, meta = _decoder_state(_read(ref, "--decoder"), ref)
    return _build(Decoder(), state, meta, ref)


def save_checkpoint(uri: str, kind: str, module: nn.Module, meta: dict[str, Any]) -> str:
    """Write an adain-ray checkpoint (atomically, local or object store); returns its weights' sha256."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    sha = state_sha256(state)
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": kind,
        "arch": ARCH_VERSION,
        "state_dict": state,
        "meta": {**meta, "weights_sha256": sha},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes(uri, buffer.getvalue())
    return sha
