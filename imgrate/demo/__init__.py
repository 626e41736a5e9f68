"""The simulated Instagram (``crawl.source: demo``): :mod:`.world` (users, posts, images, the
hidden appeal the oracle reads) and :mod:`.server` (the endpoints, served to Instaloader
through requests-mock, with fault injection)."""
