"""``switchboard catalog import`` against an in-process fake catalog."""

from __future__ import annotations

import grpc
import pytest

from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from tests.fakes.cli_servers import cli, serving

ADD = catalog_pb2_grpc.add_CatalogServiceServicer_to_server
Kind = catalog_pb2.CatalogChange.Kind


class FakeCatalog(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self) -> None:
        self.requests: list[catalog_pb2.ImportCatalogRequest] = []

    async def ImportCatalog(
        self,
        request: catalog_pb2.ImportCatalogRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> catalog_pb2.ImportCatalogResponse:
        self.requests.append(request)
        return catalog_pb2.ImportCatalogResponse(
            source=request.source, source_version="0.2.3 (data sha256:abc)",
            applied=not request.dry_run, catalog_version=12,
            changes=[
                catalog_pb2.CatalogChange(
                    kind=Kind.KIND_PRICE_CHANGE, id="openai:openai/gpt-4o-mini",
                    detail="prompt 0.2 -> 0.15"),
                catalog_pb2.CatalogChange(
                    kind=Kind.KIND_NEW_MODEL, id="openai/gpt-5", detail="GPT-5"),
            ],
            skipped=["provider aws (AWS Bedrock): no known base URL and wire format for it"],
        )  # fmt: skip


async def test_dry_run_prints_one_line_per_change_and_a_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = FakeCatalog()  # type: ignore[abstract]  # the base answers UNIMPLEMENTED
    async with serving(ADD, fake) as address:
        code = await cli(
            "--catalog", address, "--admin-key", "opk_test", "catalog", "import", "--dry-run",
            "--provider", "openai", "--provider", "google",
        )  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0
    (request,) = fake.requests
    assert request.dry_run and list(request.provider_ids) == ["openai", "google"]
    assert request.source == "genai-prices"
    assert out.splitlines() == [
        "price openai:openai/gpt-4o-mini: prompt 0.2 -> 0.15",
        "new model openai/gpt-5: GPT-5",
        "genai-prices 0.2.3 (data sha256:abc): 1 new model, 1 price; 1 skipped"
        " (dry run, nothing changed; catalog version 12)",
    ]


async def test_apply_lists_skipped_entries_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeCatalog()  # type: ignore[abstract]  # the base answers UNIMPLEMENTED
    async with serving(ADD, fake) as address:
        code = await cli("--catalog", address, "catalog", "import", "--skipped")
    out, _ = capsys.readouterr()
    assert code == 0 and not fake.requests[0].dry_run
    assert "skipped provider aws (AWS Bedrock)" in out
    assert out.splitlines()[-1].endswith("(applied; catalog version 12)")
