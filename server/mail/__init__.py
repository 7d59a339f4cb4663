"""Email: receipts, "ready for pickup", refund notices and show reminders.

``messages`` builds each email (pure), ``transport`` hands it to SMTP or writes it to a
file, ``outbox`` is the Redis stream every email goes through (retry with backoff,
nothing lost across a restart) and ``reminders`` keeps who asked to be told when a show
goes live. Requests only ever append to the outbox: sending never blocks a request.
"""
