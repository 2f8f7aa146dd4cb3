"""ResShift in the latent space of a VQ autoencoder, the process the released ResShift and SinSR models live on
(zsyOAOA/ResShift, wyf0912/SinSR); the autoencoder is part of the process and saved with it. How encoding, the
two-part condition, padding, tiling and the missing clip follow the official sampler: docs/processes.md.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import VQModel
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  diffusers finds loaders by this name
from torch import Tensor

from students.shapes import pad_to_multiple
from teachers.resshift import ResShiftProcess

AUTOENCODER_FOLDER = "autoencoder"


@lru_cache(maxsize=32)
def _bicubic_preimage_matrix(length: int, factor: int) -> Tensor:
    """(length, factor * length) pseudo-inverse of torch's bicubic x`factor` upsampling along one axis (float64)."""
    eye = torch.eye(length, dtype=torch.float64)[:, None, None, :]
    up = F.interpolate(eye, size=(1, factor * length), mode="bicubic", align_corners=False)[:, 0, 0, :].T
    return torch.linalg.pinv(up)


def bicubic_preimage(image: Tensor, factor: int) -> Tensor:
    """The (B, C, H / factor, W / factor) image whose torch-bicubic upsampling by `factor` is closest to `image` in
    least squares (per axis)."""
    h, w = image.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"image of size {h}x{w} is not a multiple of the latent factor {factor}")
    ph = _bicubic_preimage_matrix(h // factor, factor).to(image.device)
    pw = _bicubic_preimage_matrix(w // factor, factor).to(image.device)
    return (ph @ image.double() @ pw.T).to(image.dtype)


class LatentResShiftProcess(ResShiftProcess):
    """ResShift on the latents of `autoencoder` (attached with `use_autoencoder`, saved and loaded with the
    process)."""

    name = "resshift_latent"

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 15,
        kappa: float = 2.0,
        power: float = 0.3,
        min_noise_level: float = 0.04,
        etas_end: float = 0.99,
        prediction_type: str = "sample",
        loss: str = "mse",
        clip_sample: str = "none",
        one_step: bool = False,
        scale_factor: float = 1.0,
    ):
        if clip_sample != "none":
            raise ValueError(f"LatentResShiftProcess: clip_sample={clip_sample!r}; latents have no data range to "
                             "clip to (the official sampler does not clip with an autoencoder): use 'none'")
        if scale_factor <= 0:
            raise ValueError(f"LatentResShiftProcess: scale_factor={scale_factor} must be > 0")
        super().__init__(num_train_timesteps=num_train_timesteps, kappa=kappa, power=power,
                         min_noise_level=min_noise_level, etas_end=etas_end, prediction_type=prediction_type,
                         loss=loss, clip_sample=clip_sample, one_step=one_step)
        self.autoencoder: VQModel | None = None

    # ---- the autoencoder ----------------------------------------------------------------------------------------
    def use_autoencoder(self, autoencoder: VQModel) -> "LatentResShiftProcess":
        """Attach the (frozen) autoencoder whose latents this process runs on; returns self."""
        if not isinstance(autoencoder, VQModel):
            raise TypeError(f"LatentResShiftProcess needs a diffusers VQModel, got {type(autoencoder).__name__}")
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        return self

    def share_space(self, other) -> "LatentResShiftProcess":
        if getattr(other, "autoencoder", None) is not None:
            self.use_autoencoder(other.autoencoder)
        return self

    def space_note(self) -> str:
        self.check_ready()
        params = sum(p.numel() for p in self.autoencoder.parameters())
        f = self.spatial_factor
        return (f"It works on the latents of a full-precision VQ autoencoder ({params:,} parameters, in "
                f"`scheduler/{AUTOENCODER_FOLDER}/`): one {f}x{f}-pixel cell per latent position, so a 256x256 output "
                f"is a {256 // f}x{256 // f} latent, encoded once and decoded once per image.")

    def check_ready(self) -> None:
        if self.autoencoder is None:
            raise ValueError("a latent ResShift process has no autoencoder attached: load it from a folder that "
                             f"carries {AUTOENCODER_FOLDER}/ (an imported ResShift teacher's scheduler/, a student "
                             "stage or published folder) or call use_autoencoder")

    def _autoencoder_on(self, device: torch.device) -> VQModel:
        self.check_ready()
        if self.autoencoder.device != device:
            self.autoencoder.to(device)
        return self.autoencoder

    @property
    def latent_channels(self) -> int:
        self.check_ready()
        config = self.autoencoder.config
        return int(config.vq_embed_dim or config.latent_channels)

    @property
    def spatial_factor(self) -> int:
        self.check_ready()
        return 2 ** (len(self.autoencoder.config.block_out_channels) - 1)

    def noise_shape(self, image_shape) -> tuple[int, ...]:
        *batch, h, w = image_shape
        f = self.spatial_factor
        if h % f or w % f:
            raise ValueError(f"images of size {h}x{w} do not divide into the autoencoder's {f}x{f} latent cells")
        return (*batch[:-1], self.latent_channels, h // f, w // f)

    # ---- the space ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, image: Tensor) -> Tensor:
        """[0, 1] images -> unquantised latents x scale_factor (float32)."""
        autoencoder = self._autoencoder_on(image.device)
        with torch.autocast(image.device.type, enabled=False):
            return autoencoder.encode(image.float() * 2 - 1).latents * self.config.scale_factor

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        """Latents -> quantised, decoded [0, 1] images."""
        autoencoder = self._autoencoder_on(x.device)
        with torch.autocast(x.device.type, enabled=False):
            image = autoencoder.decode(x.float() / self.config.scale_factor).sample
        return ((image + 1) / 2).clamp(0.0, 1.0)

    def _lr_of(self, cond: Tensor, lr: Tensor | None) -> Tensor:
        """The LR at the latent size: `lr` as given, or recovered from the (unclamped) condition."""
        f = self.spatial_factor
        if lr is None:
            return bicubic_preimage(cond.float(), f)
        if tuple(lr.shape[-2:]) != (cond.shape[-2] // f, cond.shape[-1] // f):
            raise ValueError(f"the LR is {lr.shape[-1]}x{lr.shape[-2]} for a {cond.shape[-1]}x{cond.shape[-2]} "
                             f"condition: a latent ResShift model gets the LR at its latent size (1/{f}), so it "
                             f"super-resolves x{f} only")
        return lr.float()

    def _upsampled(self, lr: Tensor) -> Tensor:
        return F.interpolate(lr, scale_factor=self.spatial_factor, mode="bicubic", align_corners=False)

    def encode_condition(self, cond: Tensor, lr: Tensor | None = None) -> Tensor:
        """[encode(bicubic(LR)), the LR in [-1, 1] at the latent size] along channels, both from the LR as the
        official code makes them (a window of an LR is upsampled on its own, nothing is clamped); `cond` only
        stands in for the LR when the caller has none."""
        if lr is None:
            return torch.cat([self.encode(cond), self._lr_of(cond, None) * 2 - 1], dim=1)
        lr = self._lr_of(cond, lr)
        return torch.cat([self.encode(self._upsampled(lr)), lr * 2 - 1], dim=1)

    def pad_condition(self, cond: Tensor, multiple: int, lr: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The official padding: the LR reflect-padded to `multiple / spatial_factor` pixels, then upsampled."""
        lr = pad_to_multiple(self._lr_of(cond, lr), multiple // self.spatial_factor)
        return self._upsampled(lr).to(cond.dtype), lr

    def official_tiling(self, scale: int) -> tuple[int, int]:
        """zsyOAOA/ResShift's command line: LR chops of 512 pixels at stride 448 (`--chop_size 512`)."""
        return 512 * scale, 64 * scale

    def model_condition(self, y: Tensor) -> Tensor:
        return y[:, self.latent_channels :]

    def chain_end(self, y: Tensor) -> Tensor:
        return y[:, : self.latent_channels]

    # ---- saving and loading -------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """scheduler_config.json and the autoencoder in `autoencoder/` beside it."""
        self.check_ready()
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        self.autoencoder.save_pretrained(Path(save_directory) / AUTOENCODER_FOLDER, safe_serialization=True)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, subfolder: str | None = None,
                        return_unused_kwargs: bool = False, **kwargs):
        loaded = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder,
                                         return_unused_kwargs=return_unused_kwargs, **kwargs)
        process = loaded[0] if return_unused_kwargs else loaded
        folder = Path(pretrained_model_name_or_path) / (subfolder or "") / AUTOENCODER_FOLDER
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder.parent} holds a latent ResShift process without its autoencoder "
                                    f"({folder} is missing); training checkpoints do not carry it: use a stage, "
                                    "teacher or published folder")
        process.use_autoencoder(VQModel.from_pretrained(folder))
        return loaded
