"""Whole runs built from the stages: the pipeline, the demo, annotating new dialogues, ablations."""
