"""Packed 1-bit checkpoints: each binarized conv (and BiMaCoSR's binarized linear layers) stored as its sign bits
(8 per byte) and one scale per output channel; everything else as it is; one safetensors file with the model config
in its metadata.

Every binarizer here produces W_b = scale_o * sign pattern (one magnitude per filter: BI-DiffSR/BBCU/ReActNet/XNOR
mean |W|, IR-Net's power of two, DoReFa's layer mean, BNN's 1), so W_b is stored exactly. The rare exact zero of
sign(W) (torch.sign(0) = 0) is kept as a list of flat indices. `unpack_student` rebuilds an inference student whose
binary convs use the stored W_b directly, so its outputs are bit-identical to the student that was packed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from students.bidiffsr import BiDiffSRUNet
from students.binary import BinarizedWeight

FORMAT = "bidistill-packed-1bit"
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(positive: Tensor) -> Tensor:
    """Bool tensor -> uint8 bytes, 8 values per byte, most significant bit first (numpy.packbits order)."""
    flat = positive.flatten().to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)])
    return (flat.reshape(-1, 8) * _BIT_WEIGHTS.to(flat.device)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, count: int) -> Tensor:
    """uint8 bytes -> the first `count` bools."""
    bits = (packed[:, None] & _BIT_WEIGHTS.to(packed.device)) > 0
    return bits.flatten()[:count]


def binarized_layers(model: BiDiffSRUNet) -> list[tuple[str, BinarizedWeight]]:
    """(name, layer) of every conv and linear layer with a binarized weight."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BinarizedWeight)]


def _per_filter(scale: Tensor, weight: Tensor) -> Tensor:
    """One scale per output channel, shaped to broadcast over a conv's or a linear layer's weight."""
    return scale.reshape(-1, *[1] * (weight.dim() - 1))


def packed_state_dict(model: BiDiffSRUNet) -> dict[str, Tensor]:
    """The state dict with every binarized weight replaced by `<name>.weight_bits`, `.weight_scale` and (only where
    sign(W) has exact zeros) `.weight_zeros`."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if not any(m.binarizer.binary for _, m in binarized_layers(model)):
        raise ValueError(f"this model (binarizer={model.config.binarizer!r}) has no binarized convolution to pack")
    for name, conv in binarized_layers(model):
        with torch.no_grad():
            wb = conv.binary_weight().detach().float().cpu()
        scale = wb.abs().flatten(1).amax(dim=1)
        if not torch.equal(wb.abs(), _per_filter(scale, wb).expand_as(wb) * (wb != 0)):
            raise ValueError(f"{name}: binarized weight has more than one magnitude per filter; cannot pack to 1 bit")
        del state[f"{name}.weight"]
        state[f"{name}.weight_bits"] = pack_bits(wb > 0)
        state[f"{name}.weight_scale"] = scale.contiguous()
        zeros = (wb.flatten() == 0).nonzero().flatten()
        if zeros.numel():
            state[f"{name}.weight_zeros"] = zeros.contiguous()
    return state


def save_packed(model: BiDiffSRUNet, path: str | Path) -> Path:
    """Write the packed student to one safetensors file (written to a temporary name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}  # init arguments only (JSON-safe)
    tmp = path.with_name(f".{path.name}.partial")
    save_file(packed_state_dict(model), str(tmp), metadata={"format": FORMAT, "config": json.dumps(config)})
    tmp.replace(path)
    return path


def unpack_student(path: str | Path, device: str | torch.device = "cpu", packed_kernels: bool = False) -> BiDiffSRUNet:
    """Rebuild an inference student from a packed file; its binary convs use the stored binarized weights, as float
    convolutions or, with `packed_kernels=True`, on packed sign bits (CPU; `students.packed_conv`)."""
    path = Path(path)
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a packed BiDistill student (metadata format {metadata.get('format')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model = BiDiffSRUNet.from_config(json.loads(metadata["config"]))
    for name, conv in binarized_layers(model):
        shape, count = conv.weight.shape, conv.weight.numel()
        signs = unpack_bits(tensors.pop(f"{name}.weight_bits"), count).float() * 2 - 1
        zeros = tensors.pop(f"{name}.weight_zeros", None)
        if zeros is not None:
            signs[zeros] = 0.0
        scale = tensors.pop(f"{name}.weight_scale")
        tensors[f"{name}.weight"] = _per_filter(scale, conv.weight) * signs.reshape(shape)
        conv.use_stored_binary_weight()
    model.load_state_dict(tensors, strict=True)
    model = model.to(device).eval()
    if packed_kernels:
        model.use_packed_kernels()
    return model
