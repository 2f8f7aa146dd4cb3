"""The distillation pipeline: recipes, data, staged Accelerate training, evaluation and publishing."""
