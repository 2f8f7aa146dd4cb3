"""Full-precision SR diffusion teachers (SR3, ResShift) with diffusers-style schedulers and feature taps."""
