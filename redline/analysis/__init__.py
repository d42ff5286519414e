"""Behaviour analysis and statistics over trial traces and verdicts."""
