"""``switchboard catalog check``: the sub-command's options, the handler reading the catalog
over gRPC and the router's environment, and the report in text and JSON (no keys in either)."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard_cli import catalog_check
from switchboard_cli.catalog_check import CatalogReport, MissingEndpoint, ProviderCheck
from switchboard_cli.output import Output
from tests.fakes import openai_server
from tests.fakes.script import Script

KEY = "sk-never-printed-0123456789"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="switchboard")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true")
    groups = top.add_subparsers(dest="command")
    catalog = groups.add_parser("catalog")
    actions = catalog.add_subparsers(dest="catalog_command")
    catalog_check.register(actions, common)
    return top


def test_check_parses_its_options_and_names_its_handler() -> None:
    args = parser().parse_args(
        ["catalog", "check", "--provider", "openai", "--provider", "google", "--timeout", "3"]
    )
    assert (args.provider, args.timeout) == (["openai", "google"], 3.0)
    assert (args.handler, args.service) == (catalog_check.run_check, "catalog")


class FakeCatalog(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    async def ListProviders(self, request: Any, context: Any) -> catalog_pb2.ListProvidersResponse:
        provider = catalog_pb2.Provider(
            id="openai", api_format=catalog_pb2.API_FORMAT_OPENAI_CHAT, base_url=self.base_url
        )
        return catalog_pb2.ListProvidersResponse(providers=[provider])

    async def ListModels(self, request: Any, context: Any) -> catalog_pb2.ListModelsResponse:
        # Two pages, as the catalog pages them.
        upstream = "gone-model" if request.page_token else "fake-model-a"
        model = catalog_pb2.Model(
            id=f"openai/{upstream}",
            endpoints=[
                catalog_pb2.Endpoint(
                    id=f"openai:{upstream}",
                    provider_id="openai",
                    upstream_model=upstream,
                    status=catalog_pb2.ENDPOINT_STATUS_ACTIVE,
                )
            ],
        )
        token = "" if request.page_token else "next"
        return catalog_pb2.ListModelsResponse(models=[model], next_page_token=token)


@pytest.fixture
async def catalog_channel() -> AsyncIterator[tuple[grpc.aio.Channel, str]]:
    async with openai_server.serve(Script()) as fake:
        server = grpc.aio.server()
        fake_catalog = FakeCatalog(fake.base_url)  # type: ignore[abstract]  # the rest UNIMPLEMENTED
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(fake_catalog, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, fake.base_url
        await server.stop(None)


ENV = {
    "SWITCHBOARD_PROVIDER_KEY_OPENAI": KEY,
    "SWITCHBOARD_PROVIDER_HOSTS_OPENAI": "127.0.0.1",
    "SWITCHBOARD_UPSTREAM_ALLOWLIST": "127.0.0.1",
}


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
async def test_the_handler_reports_what_the_provider_no_longer_lists(
    catalog_channel: tuple[grpc.aio.Channel, str], as_json: bool
) -> None:
    channel, _ = catalog_channel
    out, err = io.StringIO(), io.StringIO()
    args = argparse.Namespace(timeout=5.0, provider=[])
    code = await catalog_check.run_check(
        args, channel, Output(json=as_json, out=out, err=err), env=ENV
    )
    assert code == 1
    text = out.getvalue()
    assert KEY not in text + err.getvalue()
    if as_json:
        report = json.loads(text)
        assert [m["endpoint_id"] for m in report["missing"]] == ["openai:gone-model"]
        assert report["providers"][0]["reached"] is True
    else:
        assert "openai:gone-model" in text
        assert "fake-model-a" not in text


def test_the_text_report_says_why_a_provider_was_not_reached() -> None:
    report = CatalogReport(
        missing=(MissingEndpoint("p:m", "p/m", "p", "m"),),
        providers=(
            ProviderCheck("p", 1, listed=3),
            ProviderCheck("q", 2, reason="UPSTREAM_TIMEOUT", problem="q did not list in 5 s"),
            ProviderCheck("r", 1, listed=99, complete=False),
        ),
    )
    out = io.StringIO()
    catalog_check.show_report(report, Output(out=out, err=io.StringIO()))
    text = out.getvalue()
    assert "not reached: UPSTREAM_TIMEOUT: q did not list in 5 s" in text
    assert "listing cut short" in text
    assert not report.clean
    assert CatalogReport((), (ProviderCheck("p", 1, listed=3),)).clean
