"""The router: Switchboard's public completion API."""
