"""Launched by test_trainer.py under `accelerate launch` with two CPU processes: runs a recipe and writes each
rank's final student weights, so the test can check that DDP kept the ranks identical."""

import sys
from pathlib import Path

from safetensors.torch import save_file

from pipeline.recipe import load_recipe
from pipeline.trainer import Trainer

recipe = load_recipe(sys.argv[1], sys.argv[2:])
trainer = Trainer(recipe)
trainer.run()
rank = trainer.accelerator.process_index
out = Path(recipe.run.output_dir)
state = {k: v.contiguous() for k, v in trainer.student.state_dict().items()}
save_file(state, str(out / f"rank{rank}-of-{trainer.accelerator.num_processes}.safetensors"))
