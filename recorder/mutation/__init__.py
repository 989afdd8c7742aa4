"""Mutation capture: which statements change data, how they are rewritten to return the
rows they change, and how captured rows become mutation events.

Sans-I/O: pglast analysis and string splicing (``analyze``, ``forms``, ``planner``),
the in-band catalog lookup and its cache (``identity``), and the recorder's side
(``events``, ``txn``). The proxy's message-level half is ``flux_proxy.pgrewrite``.
"""
