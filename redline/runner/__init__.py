"""Trials and runs: one trial = one fresh sandbox, one deployed system, one task, one verdict."""
