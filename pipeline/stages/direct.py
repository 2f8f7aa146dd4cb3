"""Stage `direct`: BI-DiffSR's own training, L1 between the predicted and the true noise, t per sample."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from pipeline.stages.base import Stage, add_noise_per_sample


class DirectStage(Stage):
    def __init__(self, process):
        self.process = process

    def loss(self, model, batch, generator) -> tuple[Tensor, dict[str, Tensor]]:
        x_t, noise, t = add_noise_per_sample(self.process, batch["hr"], generator)
        loss = F.l1_loss(model(x_t, batch["cond"], t).float(), noise)
        return loss, {"loss": loss.detach()}
