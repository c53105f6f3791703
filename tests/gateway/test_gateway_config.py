"""The generated Envoy config: accepted by the real `envoy --mode validate`, and safe by shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from callisto.gateway.config import (
    CORS_ORIGINS_VARIABLE,
    LONG_UNARY_METHODS,
    QUIET_STREAM_METHODS,
    RATE_LIMIT_KEY,
    GatewaySpec,
    cluster_name,
    cors_origins_from_environment,
    render_config,
    write_config,
)
from callisto.gateway.descriptors import (
    all_service_names,
    build_descriptor_set,
    find_service,
    http_annotated_methods,
)
from callisto.gateway.process import GatewayError, validate, write_gateway_files
from callisto.mesh.cli import app


def all_services_spec(directory: Path) -> GatewaySpec:
    upstreams = {name: ("127.0.0.1", 50051 + i) for i, name in enumerate(all_service_names())}
    return GatewaySpec(upstreams=upstreams, descriptor_path=directory / "descriptors.pb")


def http_filter(config: dict[str, Any], name: str) -> dict[str, Any]:
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    for entry in hcm["typed_config"]["http_filters"]:
        if entry["name"] == name:
            typed: dict[str, Any] = entry["typed_config"]
            return typed
    raise AssertionError(f"no {name} filter")


def test_every_contract_service_is_routed() -> None:
    assert sorted(all_service_names()) == [
        "callisto.generation.v1.GenerationService",
        "callisto.orchestration.v1.OrchestrationService",
        "callisto.persistence.v1.PersistenceService",
        "callisto.retrieval.v1.RetrievalService",
    ]


def test_config_is_accepted_by_envoy_validate(tmp_path: Path) -> None:
    config_path = write_gateway_files(all_services_spec(tmp_path), tmp_path)
    validate(config_path)


def test_validate_raises_with_envoys_message(tmp_path: Path) -> None:
    spec = all_services_spec(tmp_path)
    config_path = write_gateway_files(spec, tmp_path)
    config = yaml.safe_load(config_path.read_text())
    config["static_resources"]["clusters"][0]["connect_timeout"] = "not-a-duration"
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(GatewayError, match=r"connect_timeout|[Dd]uration"):
        validate(config_path)


def test_admin_is_bound_to_loopback_only(tmp_path: Path) -> None:
    admin = render_config(all_services_spec(tmp_path))["admin"]
    assert admin["address"]["socket_address"]["address"] == "127.0.0.1"


def test_filters_are_in_the_order_a_request_meets_them(tmp_path: Path) -> None:
    config = render_config(all_services_spec(tmp_path))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    assert [f["name"] for f in hcm["typed_config"]["http_filters"]] == [
        "envoy.filters.http.cors",
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.lua",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.router",
    ]
    assert hcm["typed_config"]["codec_type"] == "AUTO"


def test_rate_limit_is_present(tmp_path: Path) -> None:
    spec = GatewaySpec(
        upstreams={"callisto.generation.v1.GenerationService": ("127.0.0.1", 1)},
        descriptor_path=tmp_path / "d.pb",
        rate_limit_tokens=7,
        rate_limit_fill_interval_s=2,
    )
    limiter = http_filter(render_config(spec), "envoy.filters.http.local_ratelimit")
    bucket = {"max_tokens": 7, "tokens_per_fill": 7, "fill_interval": "2s"}
    assert limiter["token_bucket"] == bucket
    assert limiter["filter_enforced"]["default_value"]["numerator"] == 100
    # One dynamic bucket per authorization header value (a wildcard descriptor entry).
    [action] = limiter["rate_limits"][0]["actions"]
    assert action["request_headers"] == {
        "header_name": "authorization",
        "descriptor_key": RATE_LIMIT_KEY,
    }
    assert limiter["descriptors"] == [
        {"entries": [{"key": RATE_LIMIT_KEY}], "token_bucket": bucket}
    ]
    assert limiter["always_consume_default_token_bucket"] is False
    assert limiter["max_dynamic_descriptors"] == spec.rate_limit_max_keys


def test_every_annotated_rpc_is_transcoded(tmp_path: Path) -> None:
    spec = all_services_spec(tmp_path)
    transcoder = http_filter(render_config(spec), "envoy.filters.http.grpc_json_transcoder")
    annotated = [
        method.full_name
        for name in spec.upstreams
        for method in http_annotated_methods(find_service(name))
    ]
    assert annotated, "the contracts carry google.api.http annotations"
    for method_name in annotated:
        assert method_name.rpartition(".")[0] in transcoder["services"]
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["print_options"]["stream_newline_delimited"] is True


def test_only_given_services_are_routed(tmp_path: Path) -> None:
    spec = GatewaySpec(
        upstreams={"callisto.persistence.v1.PersistenceService": ("127.0.0.1", 50051)},
        descriptor_path=tmp_path / "d.pb",
    )
    config = render_config(spec)
    assert [c["name"] for c in config["static_resources"]["clusters"]] == [
        "callisto_persistence_v1_persistence_service"
    ]
    transcoder = http_filter(config, "envoy.filters.http.grpc_json_transcoder")
    assert transcoder["services"] == ["callisto.persistence.v1.PersistenceService"]


def test_unknown_service_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="known"):
        GatewaySpec(upstreams={"callisto.nope.v1.Nope": ("127.0.0.1", 1)}, descriptor_path=tmp_path)


def test_descriptor_set_carries_dependencies_and_error_details() -> None:
    names = [file.name for file in build_descriptor_set().file]
    for required in (
        "google/api/annotations.proto",
        "google/api/http.proto",
        "google/rpc/status.proto",
        "google/rpc/error_details.proto",
        "google/protobuf/descriptor.proto",
    ):
        assert required in names
    # Dependencies come before their dependants, as protoc writes them.
    assert names.index("google/api/http.proto") < names.index("google/api/annotations.proto")
    assert names.index("callisto/common/v1/common.proto") < names.index(
        "callisto/generation/v1/generation.proto"
    )


def test_written_yaml_reads_back_as_the_rendered_config(tmp_path: Path) -> None:
    spec = all_services_spec(tmp_path)
    path = write_config(spec, tmp_path / "envoy.yaml")
    assert yaml.safe_load(path.read_text()) == render_config(spec)


def test_render_command_writes_and_validates(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "gateway",
            "render",
            "--out",
            str(tmp_path),
            "--listen",
            "127.0.0.1:8080",
            "--admin-port",
            "9901",
            "--upstream",
            "callisto.persistence.v1.PersistenceService=127.0.0.1:50051",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "envoy.yaml")
    assert (tmp_path / "callisto_descriptors.pb").stat().st_size > 0


def test_render_command_rejects_an_unknown_service(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "gateway",
            "render",
            "--out",
            str(tmp_path),
            "--upstream",
            "callisto.x.v1.Nope=127.0.0.1:1",
        ],
    )
    assert result.exit_code == 2
    assert "unknown service" in result.stderr


def test_streams_have_no_route_timeout_but_unary_calls_do(tmp_path: Path) -> None:
    spec = GatewaySpec(
        upstreams={"callisto.generation.v1.GenerationService": ("127.0.0.1", 1)},
        descriptor_path=tmp_path / "d.pb",
        unary_timeout_s=12,
    )
    config = render_config(spec)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    by_match = {
        route["match"].get("path") or route["match"].get("prefix"): route["route"]
        for route in routes
        if "route" in route
    }
    generate = by_match["/callisto.generation.v1.GenerationService/Generate"]
    assert generate["timeout"] == "0s"
    assert generate["max_stream_duration"] == {
        "max_stream_duration": "0s",
        "grpc_timeout_header_max": "3600s",
    }
    unary = by_match["/callisto.generation.v1.GenerationService/"]
    assert unary["timeout"] == "12s"
    # Envoy ignores `timeout` once max_stream_duration is set: this is the bound it applies.
    assert unary["max_stream_duration"] == {
        "max_stream_duration": "12s",
        "grpc_timeout_header_max": "12s",
    }
    assert hcm["typed_config"]["stream_idle_timeout"] == "300s"
    [cluster] = config["static_resources"]["clusters"]
    protocol = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in protocol["explicit_http_config"]


def routes_by_match(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    return {
        route["match"].get("path") or route["match"].get("prefix"): route["route"]
        for route in routes
        if "route" in route and "headers" not in route["match"]
    }


def test_document_ingestion_has_a_route_timeout_that_fits_a_large_document(
    tmp_path: Path,
) -> None:
    spec = all_services_spec(tmp_path)
    routes = routes_by_match(render_config(spec))
    ingest = routes["/callisto.retrieval.v1.RetrievalService/IngestDocument"]
    expected = LONG_UNARY_METHODS["callisto.retrieval.v1.RetrievalService/IngestDocument"]
    assert expected >= 300
    assert ingest["max_stream_duration"] == {
        "max_stream_duration": f"{expected:g}s",
        "grpc_timeout_header_max": f"{expected:g}s",
    }
    # Nothing flows until the call answers: the stream idle timeout must not reset it first.
    assert ingest["idle_timeout"] == f"{expected:g}s"
    # The other unary calls keep the unary timeout.
    other = routes["/callisto.retrieval.v1.RetrievalService/"]
    assert other["max_stream_duration"]["max_stream_duration"] == "30s"
    validate(write_gateway_files(spec, tmp_path))


def test_conversation_runs_are_never_cut_by_a_route_timeout(tmp_path: Path) -> None:
    spec = all_services_spec(tmp_path)
    routes = routes_by_match(render_config(spec))
    service = "callisto.orchestration.v1.OrchestrationService"
    for method in ("Converse", "RunConversation", "StreamConversation"):
        route = routes[f"/{service}/{method}"]
        assert route["timeout"] == "0s"
        assert route["max_stream_duration"]["max_stream_duration"] == "0s"
        # A run waiting for a human or a slow tool sends nothing for a while.
        idle = QUIET_STREAM_METHODS[f"{service}/{method}"]
        assert idle >= 3600 and route["idle_timeout"] == f"{idle:g}s"
    # Agent calls and the other unary RPCs keep the unary timeout; other streams the global idle.
    assert routes[f"/{service}/"]["max_stream_duration"]["max_stream_duration"] == "30s"
    assert "idle_timeout" not in routes["/callisto.generation.v1.GenerationService/Generate"]
    with pytest.raises(ValueError, match="streaming method"):
        GatewaySpec(
            upstreams={service: ("127.0.0.1", 1)},
            descriptor_path=tmp_path / "d.pb",
            stream_idle_timeouts_s={f"{service}/CreateAgent": 60},
        )
    validate(write_gateway_files(spec, tmp_path))


def test_method_timeouts_are_configurable_and_checked(tmp_path: Path) -> None:
    spec = GatewaySpec(
        upstreams={"callisto.generation.v1.GenerationService": ("127.0.0.1", 1)},
        descriptor_path=tmp_path / "d.pb",
        method_timeouts_s={"callisto.generation.v1.GenerationService/ListModels": 90},
    )
    routes = routes_by_match(render_config(spec))
    list_models = routes["/callisto.generation.v1.GenerationService/ListModels"]
    assert list_models["max_stream_duration"]["max_stream_duration"] == "90s"
    with pytest.raises(ValueError, match="NoSuchMethod"):
        GatewaySpec(
            upstreams={"callisto.generation.v1.GenerationService": ("127.0.0.1", 1)},
            descriptor_path=tmp_path / "d.pb",
            method_timeouts_s={"callisto.generation.v1.GenerationService/NoSuchMethod": 90},
        )


def test_cors_allows_only_the_gateways_own_and_configured_origins(tmp_path: Path) -> None:
    spec = GatewaySpec(
        upstreams={"callisto.generation.v1.GenerationService": ("127.0.0.1", 1)},
        descriptor_path=tmp_path / "d.pb",
        listen_port=8443,
        cors_allowed_origins=("https://app.example",),
    )
    hcm = render_config(spec)["static_resources"]["listeners"][0]["filter_chains"][0]
    vhost = hcm["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
    policy = vhost["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert policy["allow_origin_string_match"] == [
        {"exact": "http://127.0.0.1:8443"},
        {"exact": "http://localhost:8443"},
        {"exact": "https://app.example"},
    ]
    with pytest.raises(ValueError, match="origin"):
        GatewaySpec(
            upstreams={"callisto.generation.v1.GenerationService": ("127.0.0.1", 1)},
            descriptor_path=tmp_path / "d.pb",
            cors_allowed_origins=("*",),
        )


def test_health_is_routed_per_service_on_the_header_the_lua_filter_sets(
    tmp_path: Path,
) -> None:
    spec = all_services_spec(tmp_path)
    hcm = render_config(spec)["static_resources"]["listeners"][0]["filter_chains"][0]
    routes = hcm["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    per_service = {
        route["match"]["headers"][0]["string_match"]["exact"]: route["route"]["cluster"]
        for route in routes
        if route["match"].get("prefix") == "/grpc.health.v1.Health/" and "headers" in route["match"]
    }
    assert per_service == {name: cluster_name(name) for name in spec.upstreams}


def test_cors_origins_come_from_the_environment_variable() -> None:
    environ = {CORS_ORIGINS_VARIABLE: " https://app.example/, http://localhost:3000 ,"}
    assert cors_origins_from_environment(environ) == (
        "https://app.example",
        "http://localhost:3000",
    )
    assert cors_origins_from_environment({}) == ()
