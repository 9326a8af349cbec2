"""One ASGI front: webhooks, the JSON API under /api, the web UI under /ui, live updates,
metrics, and the control socket that serves the same app to local users."""
