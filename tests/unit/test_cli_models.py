"""``switchboard models`` against an in-process fake catalog."""

from __future__ import annotations

import json

import grpc
import pytest

from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard.common.v1 import common_pb2
from switchboard_cli.models import cheapest
from tests.fakes.cli_servers import cli, serving

ADD = catalog_pb2_grpc.add_CatalogServiceServicer_to_server
# With an operator key the models commands ask the catalog (the fake takes any key).
ADMIN = "sk-sb-op-test"
ACTIVE, DISABLED = catalog_pb2.ENDPOINT_STATUS_ACTIVE, catalog_pb2.ENDPOINT_STATUS_DISABLED


def _endpoint(
    model: str,
    provider: str,
    prompt: str,
    completion: str,
    status: catalog_pb2.EndpointStatus.ValueType = ACTIVE,
) -> catalog_pb2.Endpoint:
    return catalog_pb2.Endpoint(
        id=f"{provider}:{model}", model_id=model, provider_id=provider, status=status,
        context_length=8192, upstream_model=model,
        pricing=common_pb2.Pricing(prompt_usd_per_mtok=prompt, completion_usd_per_mtok=completion),
    )  # fmt: skip


def _model(index: int) -> catalog_pb2.Model:
    model_id = f"author/model-{index:02d}"
    return catalog_pb2.Model(
        id=model_id,
        display_name=f"Model {index}",
        context_length=8192,
        endpoints=[
            _endpoint(model_id, "alpha", "0.15", "0.6"),
            _endpoint(model_id, "beta", "0.000015", "0.9"),
            _endpoint(model_id, "gamma", "0.000001", "0.0001", status=DISABLED),
        ],
    )


class FakeCatalog(catalog_pb2_grpc.CatalogServiceServicer):
    """Five models served two to a page; tokens are the next index."""

    def __init__(self) -> None:
        self.models = [_model(i) for i in range(5)]
        self.requests: list[catalog_pb2.ListModelsRequest] = []

    async def ListModels(
        self,
        request: catalog_pb2.ListModelsRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> catalog_pb2.ListModelsResponse:
        self.requests.append(request)
        start = int(request.page_token or 0)
        end = start + 2
        token = str(end) if end < len(self.models) else ""
        return catalog_pb2.ListModelsResponse(models=self.models[start:end], next_page_token=token)

    async def GetModel(
        self,
        request: catalog_pb2.GetModelRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> catalog_pb2.GetModelResponse:
        for model in self.models:
            if model.id == request.model_id:
                return catalog_pb2.GetModelResponse(model=model)
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model_id}")


def _fake() -> FakeCatalog:
    return FakeCatalog()  # type: ignore[abstract]  # the generated base answers UNIMPLEMENTED


async def test_models_list_walks_every_page(capsys: pytest.CaptureFixture[str]) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli(
            "--catalog", address, "--admin-key", ADMIN, "models", "list", "--provider", "alpha"
        )
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert code == 0
    assert err == ""
    assert [r.page_token for r in fake.requests] == ["", "2", "4"]
    assert {r.provider_id for r in fake.requests} == {"alpha"}
    assert lines[0].split()[0] == "ID"
    assert [line.split()[0] for line in lines[1:]] == [m.id for m in fake.models]
    # cheapest of the active endpoints, printed as sent; the disabled one is ignored
    assert lines[1].split() == ["author/model-00", "8192", "0.000015", "0.6", "alpha,beta"]


async def test_models_list_json_keeps_prices_as_strings(capsys: pytest.CaptureFixture[str]) -> None:
    async with serving(ADD, _fake()) as address:
        assert (
            await cli("--catalog", address, "--admin-key", ADMIN, "models", "list", "--json") == 0
        )
    models = json.loads(capsys.readouterr().out)["models"]
    assert len(models) == 5
    assert models[0]["endpoints"][1]["pricing"]["prompt_usd_per_mtok"] == "0.000015"


async def test_models_show_prints_endpoints(capsys: pytest.CaptureFixture[str]) -> None:
    async with serving(ADD, _fake()) as address:
        code = await cli(
            "--catalog", address, "--admin-key", ADMIN, "models", "show", "author/model-03"
        )
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("author/model-03  Model 3\n")
    rows = [line.split() for line in out.splitlines() if line.startswith(("alpha:", "gamma:"))]
    assert rows[0][:7] == ["alpha:author/model-03", "alpha", "8192", "-", "0.15", "0.6", "0.15"]
    assert rows[1][-1] == "disabled"


async def test_models_show_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    async with serving(ADD, _fake()) as address:
        code = await cli(
            "--catalog", address, "--admin-key", ADMIN, "models", "show", "nobody/nothing"
        )
    assert code == 1
    assert "NOT_FOUND: no model nobody/nothing" in capsys.readouterr().err


def test_cheapest_compares_decimals_and_prints_the_original() -> None:
    assert cheapest(["0.6", "0.000015", "1e-3", "", "bad"]) == "0.000015"
    assert cheapest(["2.50", "10"]) == "2.50"
    assert cheapest([]) == "-"
