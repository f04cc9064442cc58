"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis): generated
valid and invalid requests to every route must never get a server error. Runs against the
ingress app in process (the same FastAPI app the Ray ingress serves); `bench/serve_load.py`
and tests/test_serving_e2e.py cover the Ray path.

The schema's Hypothesis strategy is driven from a plain test (no schemathesis pytest plugin), so
the test does not depend on pytest internals and keeps its own record of the answers it saw."""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from pipeline.serving.components import LocalBackends  # noqa: E402
from pipeline.serving.config import parse_serve_config  # noqa: E402
from pipeline.serving.routes import create_app  # noqa: E402
from pipeline.serving.runview import RunView  # noqa: E402
from pipeline.serving.service import IngressState, RecommendService  # noqa: E402
from tests.test_serving_support import tiny_run  # noqa: E402


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    root = tmp_path_factory.mktemp("schema")
    cfg = parse_serve_config({"logging": {"dir": str(root / "logs")}, "experiment": {
        "name": "e", "salt": "s", "arms": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1, "channels": ["item2item"]}]}})
    view = RunView.open(tiny_run(root / "run"))
    service = RecommendService(IngressState.build(view, cfg), LocalBackends(view, cfg), cfg)
    app = create_app(service, cfg.limits.max_body_bytes)
    api = schemathesis.openapi.from_asgi("/openapi.json", app)
    api.config.generation.update(modes=list(schemathesis.GenerationMode), database="none")  # valid and invalid inputs
    yield api
    service.state.served_log.close()
    service.state.feedback_log.close()


def test_no_server_error_for_generated_requests(api_schema):
    statuses: list[int] = []

    @given(case=api_schema.as_strategy())
    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        response = case.call()
        statuses.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code < 500
        if response.status_code >= 400:
            assert response.json()["error"]

    fuzz()
    assert any(s == 200 for s in statuses), statuses
    assert any(400 <= s < 500 for s in statuses), statuses
