"""The FastAPI application: devices, counters, finance, and the web pages."""
