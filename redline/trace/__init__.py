"""Trace events: collected from every instance of the AI system, appended and flushed as they arrive."""
