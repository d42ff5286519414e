"""The AI system under test, as deployed into a sandbox: one folder holding the weights, the LLM
server launcher, the agent program, a start script, a config and a requirements file."""
