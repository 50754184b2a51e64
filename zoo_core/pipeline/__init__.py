"""The one pipe every data stage runs: source -> batcher -> backend -> decode -> sinks.

``workers`` (spawned preprocess processes, shared-memory slots, the ordered window), ``batching``
(the batcher and the padding rule), ``stream`` (the threads and the run's guarantees), ``sources``,
``sinks`` and ``stats``.
"""
