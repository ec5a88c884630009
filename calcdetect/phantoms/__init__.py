"""Synthetic images with known ground truth (one module per modality) for tests and validation."""
