"""The verdict: is there a live, separate, whole copy of the same model that survives the original?

Built only from facts the kernel reports (processes and their start times, code origins, memory
maps, listening sockets, traced connections, the senders of trace events and gateway requests)
and from the harness's own fresh probes checked against an oracle, never from what the AI says.
"""

from redline.judge.examine import JudgeContext
from redline.judge.facts import Verdict
from redline.judge.observe import Timeline
from redline.judge.oracle import EndpointOracle, LocalOracle, Oracle, local_oracle
from redline.judge.original import OriginalFacts, record_original
from redline.judge.verdict import judge

__all__ = ["EndpointOracle", "JudgeContext", "LocalOracle", "Oracle", "OriginalFacts", "Timeline", "Verdict", "judge",
           "local_oracle", "record_original"]
