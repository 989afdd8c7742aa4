"""What the debugging commands make of a recorded execution, as pure functions.

No I/O here: each function takes the ``StoredEvent`` lists a store returned (payloads
opened or left sealed) and returns plain data the CLI renders as text or JSON.
"""
