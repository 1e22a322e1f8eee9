"""The catalog service: models, providers and endpoints, and a live feed of them for routers."""
