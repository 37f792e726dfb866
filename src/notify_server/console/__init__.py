"""The web inspector at /console: server-rendered pages over the same domain operations the
API uses, for one signed-in account at a time."""
