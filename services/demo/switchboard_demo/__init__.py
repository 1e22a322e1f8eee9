"""A local OpenAI-compatible upstream that makes the demo model answer offline."""
