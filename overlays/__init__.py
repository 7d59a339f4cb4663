"""The on-screen scene: layers rendered to premultiplied YUVA sprites, blended in place."""
