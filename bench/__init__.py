"""The benchmark toolkit of DESIGN §9 (``make bench``; not shipped in the wheel).

``traffic`` generates LiveKit usage (tenants, agents, sessions, events), ``loader`` COPYs it into a scratch
database with both rollups, ``scratch`` creates and drops that database, ``server`` runs gunicorn on
loopback, ``measure`` and ``report`` time and print. ``ingest``, ``invoice`` and ``portal`` are the three
benchmarks (``python -m bench.ingest --help``); their figures are in docs/performance.md.
"""
