"""Crawling: Instaloader against the real or the simulated Instagram, into append-only shards."""
