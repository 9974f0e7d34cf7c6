"""Experiment runners behind the recipes (one per recipe kind); the recipes themselves are YAML data."""
