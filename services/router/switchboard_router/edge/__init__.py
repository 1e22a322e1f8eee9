"""The router's HTTP edge: the OpenAI-compatible chat completions API (and OpenRouter's
extensions) and the Anthropic Messages API, served by the router process on a second listener
over the same completions (:mod:`switchboard_router.completions`): the same routing, limits,
budgets and ledger as the gRPC API, with no extra hop.

- :mod:`.server`: the listener (aiohttp), its routes and lifecycle.
- :mod:`.door`: what every route shares: the API key (checked by the router's own
  authenticator against the RPC owner table), the completions, the account reads, body limits.
- :mod:`.status`: domain errors as HTTP statuses.
- :mod:`.openai_routes`, :mod:`.anthropic_routes`: one module per public API shape, each
  turning its JSON into a router request and the relay's events back into its own JSON/SSE.
"""
