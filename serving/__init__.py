"""Putting a trained run to use: predict with it (by id, folder, or the best of the latest experiment) and
export it as a standard Hugging Face model folder with a model card."""
