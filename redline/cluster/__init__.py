"""Trials on a Ray cluster (the optional extra ``redline[ray]``).

* :mod:`.connection` -- connecting to a cluster and listing its redline nodes (nodes that
  advertise the custom resource ``redline``: one unit per trial slot);
* :mod:`.nodes` -- the containment check of every node (``redline cluster check``), which decides
  where trials may run;
* :mod:`.relay` -- the actor through which running trials stream their trace to the driver and
  learn that they must stop;
* :mod:`.executor` -- :class:`~.executor.RayExecutor`, one Ray task per trial;
* :mod:`.stop` -- ``redline stop``: every instance of a run, on every node.

Nothing here imports Ray at module level: without the extra, redline runs locally and a
``--cluster`` option is a one-line usage error.
"""
