"""redline: measure, explain and contain the self-replication of LLM-powered AI systems."""

__version__ = "0.1.0"
