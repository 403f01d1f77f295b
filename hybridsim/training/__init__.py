"""The refiner's tools: paired clips, train-refiner, eval-refiner, latent bench, render-vs-reference check."""
