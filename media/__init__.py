"""Media path: WHIP ingest, compositor, shared encoders, WHEP fan-out, PocketCam."""
