"""The diffusion-process interface shared by teachers and students, the one sampling loop and the one noisy batch.

A process owns everything about a diffusion: the space the model works in (`encode` / `decode` from and to [0, 1]
images, `data_range` and the x0 clip; for a latent process its autoencoder and the condition it builds from the
upsampled LR, `encode_condition` / `model_condition`), `add_noise`, what the denoiser predicts and the training
target and loss, the deterministic and the stochastic sampler (`step`), and the start state x_T (`prior`), which is
also where a one-step student starts. A model on a process is a denoiser `f(model_input, model_condition(y), t)`
plus that process; `sample` and `noisy_batch` below are written once, against this interface, for every teacher and
student.

A process is a diffusers `SchedulerMixin` + `ConfigMixin`: it saves as `scheduler_config.json` (in a pipeline's
`scheduler/` folder, or beside a student's `config.json`) and is found again by its class name. A new process is one
new file with a subclass; it registers itself by being defined (the modules are imported by `teachers`).

Index convention: timesteps are integers 0 .. T-1, one per sample, 0 the least noisy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from students.shapes import pad_to_multiple

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]

PROCESSES: dict[str, type["DiffusionProcess"]] = {}
LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}


class DiffusionProcess(SchedulerMixin, ConfigMixin):
    """Interface of a diffusion process (see the module docstring). Subclasses implement every method that raises."""

    config_name = "scheduler_config.json"
    order = 1
    name = ""  # recipe name: [process] type = "<name>"
    prediction_types: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            PROCESSES[cls.name] = cls

    # ---- the space the model works in ---------------------------------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        return int(self.config.num_train_timesteps)

    @property
    def clip_range(self) -> tuple[float, float] | None:
        """The range the x0 estimate is clipped to while sampling (None: no clip)."""
        raise NotImplementedError

    def encode(self, image: Tensor) -> Tensor:
        """[0, 1] images (HR or the upsampled LR condition) -> the process's space."""
        raise NotImplementedError

    def decode(self, x: Tensor) -> Tensor:
        """The process's space -> [0, 1] images, clamped."""
        raise NotImplementedError

    def remake_condition(self, cond: Tensor, lr: Tensor | None) -> Tensor:
        """The condition as this process's models were trained on it: `cond` itself, unless the process makes its
        own from the LR (SR3's PIL bicubic, `DDPMProcess(condition_resize="pil")`) and the LR is given."""
        return cond

    def encode_condition(self, cond: Tensor, lr: Tensor | None = None) -> Tensor:
        """The condition y in the process's space (the chain's end point and whatever the denoiser is given; see
        `model_condition`) from cond = bicubic(LR) at HR size, unclamped as the upsampling makes it, and the LR in
        [0, 1] it was made from when the caller has it. Pixel space: BI-DiffSR's condition, cond (`remake_condition`)
        clamped to [0, 1]."""
        return self.encode(self.remake_condition(cond, lr).clamp(0.0, 1.0))

    def pad_condition(self, cond: Tensor, multiple: int, lr: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(cond, lr) padded on the bottom/right to `multiple` HR pixels: pixel space reflect-pads the condition
        (`remake_condition`d; the LR is used up and comes back as None)."""
        return pad_to_multiple(self.remake_condition(cond, lr), multiple), None

    def official_tiling(self, scale: int) -> tuple[int, int] | None:
        """(tile, overlap) in HR pixels of the official sampler of the models this process comes from, when it
        chops images its own way (used when a caller does not choose); None: the caller's default."""
        return None

    def model_condition(self, y: Tensor) -> Tensor:
        """What the denoiser is given of the condition y (all of it unless the process keeps more in y)."""
        return y

    @property
    def spatial_factor(self) -> int:
        """How many image pixels one position of the process's space spans per side (1 in pixel space)."""
        return 1

    def noise_shape(self, image_shape: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the start noise (and of x_t) for a batch of images of `image_shape`."""
        return tuple(image_shape)

    def space_note(self) -> str:
        """One sentence for model cards about what else the process's space needs (a latent process's full-precision
        autoencoder); empty in pixel space."""
        return ""

    def check_ready(self) -> None:
        """A ValueError saying what is missing when the process cannot encode yet (a latent process without its
        autoencoder)."""

    def share_space(self, other: "DiffusionProcess") -> "DiffusionProcess":
        """Take the parts of `other`'s space that are not settings (a latent process's autoencoder); returns self."""
        return self

    def derived(self, **changes) -> "DiffusionProcess":
        """This process with some settings changed, in the same space."""
        return type(self).from_config(self.config, **changes).share_space(self)

    # ---- training -----------------------------------------------------------------------------------------------
    def sample_timesteps(self, batch: int, generator: torch.Generator | None, device) -> Tensor:
        """One timestep per sample, uniform over 0 .. T-1."""
        return torch.randint(0, self.num_train_timesteps, (batch,), device=device, generator=generator)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """x_t from clean x0 (and the condition y, for processes that need it), one t per sample."""
        raise NotImplementedError

    def model_input(self, x_t: Tensor, t: Tensor | int) -> Tensor:
        """What the denoiser sees of x_t (identity unless the process scales its input)."""
        return x_t

    def for_student(self) -> "DiffusionProcess":
        """This process as a BI-DiffSR student lives on it: the student is given timesteps (its TaR/TaA groups index
        them), whatever time input a teacher on this process takes (itself unless that differs)."""
        return self

    def model_time(self, t: Tensor) -> Tensor:
        """What the denoiser is given as its time input for timesteps `t` (the indices themselves unless the process
        conditions on something else, e.g. SR3's continuous noise level)."""
        return t

    def target(self, x0: Tensor, noise: Tensor, y: Tensor) -> Tensor:
        """The denoiser's training target for this process's prediction type."""
        raise NotImplementedError

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return LOSSES[self.config.loss](prediction.float(), target.float())

    def predict_x0(self, output: Tensor, x_t: Tensor, t: Tensor | int, y: Tensor, clip: bool = True) -> Tensor:
        """The x0 estimate implied by a denoiser output, clipped to `clip_range` unless `clip=False`."""
        raise NotImplementedError

    # ---- sampling -----------------------------------------------------------------------------------------------
    @property
    def default_inference_steps(self) -> int:
        raise NotImplementedError

    default_deterministic = True  # the sampler used when a caller does not choose

    def inference_timesteps(self, num_inference_steps: int | None) -> list[int]:
        """The timesteps a sampler visits, noisiest first."""
        raise NotImplementedError

    def prior(self, y: Tensor, noise: Tensor) -> Tensor:
        """The start state x_T (also the input of a one-step student)."""
        raise NotImplementedError

    def step(self, output: Tensor, t: int, t_prev: int, x_t: Tensor, y: Tensor, deterministic: bool = True,
             generator: torch.Generator | None = None) -> Tensor:
        """One sampler step.

        Args:
            output: the denoiser's output at timestep `t` for `x_t`; `y`: the encoded condition.
            t_prev: the next timestep; -1 after the last step.
            deterministic: the deterministic sampler (DDIM, SinSR's) or the stochastic one (drawing with `generator`).

        Returns:
            x at `t_prev`, or the clipped x0 estimate when `t_prev` is -1.
        """
        raise NotImplementedError

    def one_step_variant(self) -> "DiffusionProcess":
        """This process for a student distilled to one evaluation at the top timestep from `prior` (its output read
        as x0); `config.one_step` tells samplers to take that single step."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_train_timesteps


def per_sample(table: Tensor, t: Tensor | int, like: Tensor) -> Tensor:
    """table[t] shaped (B or 1, 1, 1, 1) in `like`'s dtype and device: one schedule value per sample."""
    t = torch.as_tensor(t, device=like.device).reshape(-1)
    return table.to(device=like.device, dtype=like.dtype)[t].reshape(-1, *([1] * (like.ndim - 1)))


def check_prediction_type(process: DiffusionProcess, prediction_type: str) -> None:
    if prediction_type not in process.prediction_types:
        raise ValueError(f"{type(process).__name__}: prediction_type={prediction_type!r} is not one of "
                         f"{process.prediction_types}")


def build_process(name: str, **options) -> DiffusionProcess:
    """A process by its recipe name ("ddpm", "resshift") and its settings; a wrong name or setting is a ValueError."""
    if name not in PROCESSES:
        raise ValueError(f"process {name!r} is not known; choose one of: {', '.join(sorted(PROCESSES))}")
    return PROCESSES[name](**options)


def process_class(class_name: str) -> type[DiffusionProcess]:
    for cls in PROCESSES.values():
        if cls.__name__ == class_name:
            return cls
    raise ValueError(f"{class_name!r} is not a diffusion process; known: "
                     f"{', '.join(c.__name__ for c in PROCESSES.values())}")


def load_process(folder: str | Path) -> DiffusionProcess:
    """The process saved in `folder` (its scheduler_config.json names the class)."""
    file = Path(folder) / DiffusionProcess.config_name
    if not file.is_file():
        raise FileNotFoundError(f"{folder} holds no diffusion process ({DiffusionProcess.config_name} is missing)")
    return process_class(read_class_name(file, "process config")).from_pretrained(str(folder))


def read_class_name(file: Path, what: str) -> str:
    """The `_class_name` a diffusers config or model index names; a ValueError naming `file` (a `what`) otherwise."""
    try:
        return json.loads(file.read_text())["_class_name"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{file} is not a valid {what}: {err}") from None


@dataclass
class NoisyBatch:
    """One training draw in the process's space: the denoiser call is `model(x_in, y_in, process.model_time(t))`."""

    x0: Tensor
    y: Tensor
    t: Tensor
    noise: Tensor
    x_t: Tensor
    x_in: Tensor
    y_in: Tensor
    target: Tensor


def noisy_batch(process: DiffusionProcess, hr: Tensor, cond: Tensor, generator: torch.Generator | None,
                t: Tensor | None = None, lr: Tensor | None = None) -> NoisyBatch:
    """Encode a training batch and noise it, one timestep per sample.

    Args:
        hr, cond: [0, 1] HR patches and their bicubic(LR) condition; `lr`: the LR patches, when the caller has them.
        generator: draws the timesteps (unless `t` is given) and the noise.

    Returns:
        The noised batch: model inputs, timesteps and the training target.
    """
    x0, y = process.encode(hr), process.encode_condition(cond, lr)
    if t is None:
        t = process.sample_timesteps(hr.shape[0], generator, hr.device)
    noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = process.add_noise(x0, noise, t, y)
    return NoisyBatch(x0, y, t, noise, x_t, process.model_input(x_t, t), process.model_condition(y),
                      process.target(x0, noise, y))


def denoise_batch(model: Denoiser, process: DiffusionProcess, b: NoisyBatch, cross_timestep: bool = False,
                  **kwargs):
    """The denoiser's output on a training draw (`kwargs` go to the model, e.g. return_features). With
    `cross_timestep` (BiDM's cross-timestep feature connection, a student's `cross_timestep_blocks`) the model first
    runs without gradient on the same x0 and noise one timestep noisier (t + 1, at most T - 1), and the main pass mixes
    that pass's block outputs in, as sampling mixes in the previous step's (Xingyu-Zheng/BiDM ddpm_ours.py)."""
    if cross_timestep:
        t_next = (b.t + 1).clamp_max(process.num_train_timesteps - 1)
        x_next = process.model_input(process.add_noise(b.x0, b.noise, t_next, b.y), t_next)
        with torch.no_grad():
            _, kwargs["cache"] = model(x_next, b.y_in, process.model_time(t_next), return_features=True)
    return model(b.x_in, b.y_in, process.model_time(b.t), **kwargs)


def training_loss(model: Denoiser, process: DiffusionProcess, hr: Tensor, cond: Tensor,
                  generator: torch.Generator | None, cross_timestep: bool = False, lr: Tensor | None = None) -> Tensor:
    """The process's own loss for a denoiser on one batch (teacher training and the students' direct stage).

    Args:
        model: the denoiser; `process`: its process.
        hr, cond, lr, generator: as `noisy_batch`.
        cross_timestep: the model mixes in its own features from one step noisier (BiDM; `denoise_batch`).

    Returns:
        The scalar loss.
    """
    b = noisy_batch(process, hr, cond, generator, lr=lr)
    return process.loss(denoise_batch(model, process, b, cross_timestep), b.target)


@torch.no_grad()
def sample(model: Denoiser, process: DiffusionProcess, cond: Tensor, num_inference_steps: int | None = None, *,
           size_multiple: int = 1, generator: torch.Generator | None = None, noise: Tensor | None = None,
           deterministic: bool | None = None, decode: bool = True,
           progress: Callable[[], object] | None = None, y: Tensor | None = None, lr: Tensor | None = None) -> Tensor:
    """Super-resolve a batch with any denoiser on any process (the one sampling loop of teachers and students).

    A one-step process (`config.one_step`) evaluates the model once at the top timestep from x_T = prior(y, noise);
    others run `inference_timesteps` with the process's deterministic or stochastic step.

    Args:
        model: the denoiser, called as model(x_in, y_in, time).
        cond: bicubic(LR) at HR size, unclamped; `lr`: the LR in [0, 1] itself, when the caller has it.
        num_inference_steps: None: the process's default.
        size_multiple: the condition is padded (as the process pads, `pad_condition`) to this many positions of the
            process's space (x `spatial_factor` pixels).
        generator, noise: the start noise is `noise` (`noise_shape` of the padded condition) or drawn with
            `generator`.
        deterministic: the process's deterministic sampler (True) or its stochastic one; None: its default.
        decode: False returns the final x0 in the process's space at the padded size.
        progress: called after every network evaluation (a progress bar's update).
        y: `encode_condition` of the (already padded) condition, when the caller has it (a latent process's encoder
            is not run twice).

    Returns:
        [0, 1] images at the condition's size (or, with `decode=False`, the latent/pixel x0 as above).
    """
    h, w = cond.shape[-2:]
    padded, lr = process.pad_condition(cond, size_multiple * process.spatial_factor, lr)
    shape = process.noise_shape(padded.shape)
    if noise is not None and tuple(noise.shape) != shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape} (the padded condition's, in the "
                         "process's space)")
    y = process.encode_condition(padded, lr) if y is None else y
    y_in = process.model_condition(y)
    if noise is None:
        noise = randn_tensor(shape, generator=generator, device=y.device, dtype=y.dtype)
    deterministic = process.default_deterministic if deterministic is None else deterministic
    x = process.prior(y, noise.to(y.dtype))
    if getattr(process.config, "one_step", False):
        top = process.num_train_timesteps - 1
        time = process.model_time(torch.tensor(top, device=y.device))
        x = process.predict_x0(model(process.model_input(x, top), y_in, time), x, top, y)
        if progress is not None:
            progress()
    else:
        steps = process.inference_timesteps(num_inference_steps)
        for t, t_prev in zip(steps, steps[1:] + [-1]):
            out = model(process.model_input(x, t), y_in, process.model_time(torch.tensor(t, device=y.device)))
            x = process.step(out.to(x.dtype), t, t_prev, x, y, deterministic=deterministic, generator=generator)
            if progress is not None:
                progress()
    return process.decode(x)[:, :, :h, :w] if decode else x


def num_evaluations(process: DiffusionProcess, num_inference_steps: int | None = None) -> int:
    """How many network evaluations `sample` makes on `process` (for progress bars)."""
    if getattr(process.config, "one_step", False):
        return 1
    return len(process.inference_timesteps(num_inference_steps))
