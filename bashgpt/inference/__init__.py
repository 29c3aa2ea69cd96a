"""Inference: load a model folder, generate and check bash, evaluate, export."""
