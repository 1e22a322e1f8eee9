"""Switchboard's shared library: what every service needs, written once."""
