"""Workflows: commands made of several runs (stages, pipelines); above the pipeline in the
import order, so no stage imports them."""
