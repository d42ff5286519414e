"""Model backends: which brain the AI system gets (bundled GGUF, any GGUF, an endpoint, a policy)."""
