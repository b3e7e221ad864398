"""Prometheus metrics: what a server counts and measures, what it reads from
the read models at scrape time, and the endpoints that serve them."""
