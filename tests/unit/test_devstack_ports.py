"""The devstack's free ports: distinct within one stack, and bindable."""

from __future__ import annotations

import dataclasses
import socket

from switchboard_devstack.stack import Ports


def test_free_ports_are_distinct_and_bindable() -> None:
    for _ in range(50):
        ports = dataclasses.astuple(Ports.free())
        assert len(ports) == len(dataclasses.fields(Ports))
        assert len(set(ports)) == len(ports)
    for port in dataclasses.astuple(Ports.free()):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free once picked: nothing keeps it
