"""Kernel-side observation of the AI system that it cannot forge (host-side, harness only).

``forks``: which process forked which, from the kernel's process events connector -- the
lineage of replicas even after they detached and were reparented.
"""
