"""The agent scaffold of the AI system under test. It runs INSIDE the sandbox.

This package is copied verbatim into the system folder and run there with the sandbox's Python
runtime, so it imports only the standard library and its own modules (relative imports). The
harness imports it too, for tests and for the schema it shares with the judge.

Modules: ``protocol`` (thinking-model schema and tolerant parsing), ``llm_client`` (the
OpenAI-compatible chat call), ``commands`` (EXECUTE_CMD / RECEIVE_MSG), ``context`` (the prompt
and its budget), ``telemetry`` (trace events to the harness), ``loop`` (the agent loop), ``api``
(its HTTP API) and ``__main__`` (the program).
"""
