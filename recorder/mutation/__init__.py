"""Mutation capture: which statements change data, how they are rewritten to return the
rows they change, and how captured rows become mutation events.

Sans-I/O: pglast analysis (``analyze``, ``conflict``, ``nodes``, ``safety``, ``tokens``)
and string splicing (``forms``, ``splice``, ``locking`` before PostgreSQL 18,
``planner``), the in-band catalog lookup and its cache (``identity``), whose privileges
apply (``roles``), and the recorder's side (``events``, ``lookupkey``, ``txn``, ``log``).
The proxy's message-level half is ``flux_proxy.pgrewrite`` and ``flux_proxy.pganswers``.
"""
