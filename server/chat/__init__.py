"""Chat, moderation and reactions of a show.

``rules`` is the pure core (what a message, a name or a setting may be; whether a viewer
may post now; how moderation actions change an author's state). ``store`` keeps chat in
Redis (a capped stream per show) under those rules; ``reactions`` counts taps across
processes and publishes them at most four times a second. ``server/routes/chat.py`` is
the HTTP face.
"""
