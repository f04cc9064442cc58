"""Ray Serve's own tooling runs the application builder `pipeline.serving.app:app`: `serve run`
of a config file, and `serve deploy` to a running cluster (`ray start --head` here, on
127.0.0.1), then a rolling update to another run by redeploying, under traffic, with no failed
request. Real processes, real HTTP."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from pipeline.config import ConfigError, parse_config
from pipeline.workflow import train
from tests.test_serving_support import TINY, free_port, tiny_run

pytest.importorskip("ray.serve")
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    return env


def _serve_config(path: Path, run: Path, port: int) -> Path:
    path.write_text(yaml.safe_dump({
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "logging_config": {"enable_access_log": False},
        "applications": [{"name": "hybridrec", "route_prefix": "/", "import_path": "pipeline.serving.app:app",
                          "args": {"run": str(run)}}],
    }))
    return path


def _answered(url: str, deadline_s: float = 180.0) -> dict:
    """The first /recommend answer with items; waits while the app starts (bounded)."""
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            r = requests.post(f"{url}/recommend", json={"k": 3}, timeout=10)
            if r.status_code == 200 and r.json().get("items"):
                return r.json()
        except requests.RequestException:
            pass
        time.sleep(1.0)
    raise AssertionError(f"no answer from {url} within {deadline_s} s")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tooling")
    other = dict(TINY, channels=[TINY["channels"][0], {**TINY["channels"][1], "params": {"window": 5}}])
    return tiny_run(root / "run-a"), train(parse_config(other), run_dir=root / "run-b"), root


def test_serve_run_starts_the_builder_from_a_config_file(runs):
    run, _, root = runs
    port = free_port()
    cfg = _serve_config(root / "serve-run.yaml", run, port)
    proc = subprocess.Popen([str(BIN / "serve"), "run", str(cfg)], env=_env(), cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        body = _answered(f"http://127.0.0.1:{port}")
        assert len(body["items"]) == 3 and body["degraded"] == []
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()
        assert health["run"] == str(run.resolve())
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # serve run shuts the app and its Ray down on Ctrl-C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=_env(), capture_output=True, timeout=120)


def test_serve_deploy_to_a_cluster_and_a_rolling_update_by_redeploying(runs):
    run_a, run_b, root = runs
    gcs, dash, http = free_port(), free_port(), free_port()
    env = _env()
    start = subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", "--num-cpus=2", "--object-store-memory=200000000", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stderr[-2000:]
    url, address = f"http://127.0.0.1:{http}", f"http://127.0.0.1:{dash}"
    try:
        _a_job_without_an_address_starts_its_own_ray_beside_the_cluster(f"127.0.0.1:{gcs}", env)
        deploy = [str(BIN / "serve"), "deploy", "-a", address]
        out = subprocess.run([*deploy, str(_serve_config(root / "deploy-a.yaml", run_a, http))], env=env,
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-2000:]
        assert _answered(url)["degraded"] == []
        statuses: list[int] = []
        stop = threading.Event()

        def traffic() -> None:
            with requests.Session() as s:
                while not stop.is_set() and len(statuses) < 3000:  # bounded
                    statuses.append(s.post(f"{url}/recommend", json={"history": ["i1"], "k": 5}, timeout=30).status_code)

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            out = subprocess.run([*deploy, str(_serve_config(root / "deploy-b.yaml", run_b, http))], env=env,
                                 capture_output=True, text=True, timeout=180)
            assert out.returncode == 0, out.stderr[-2000:]
            end = time.time() + 180
            while requests.get(f"{url}/healthz", timeout=10).json()["run"] != str(run_b.resolve()) and time.time() < end:
                time.sleep(0.5)
            time.sleep(1.0)
        finally:
            stop.set()
            sender.join()
        assert requests.get(f"{url}/healthz", timeout=10).json()["run"] == str(run_b.resolve())
        assert len(statuses) > 10 and set(statuses) == {200}
    finally:
        subprocess.run([str(BIN / "serve"), "shutdown", "-y", "-a", address], env=env, capture_output=True, timeout=120)
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


PROBE = """
import ray
from pipeline.core.raystart import start_or_join
from pipeline.serving.app import init_ray
from pipeline.serving.config import parse_serve_config
init_ray(parse_serve_config({"ray": {"num_cpus": 1, "object_store_mb": 100}}))
print("local", ray.get_runtime_context().gcs_address)
ray.shutdown()
start_or_join("%s", num_cpus=1, object_store_memory=80 << 20, include_dashboard=False)
print("joined", ray.get_runtime_context().gcs_address)
ray.shutdown()
import os
os.environ["RAY_ADDRESS"] = "%s"
start_or_join(None, num_cpus=1, object_store_memory=80 << 20)
print("env", ray.get_runtime_context().gcs_address)
"""


def _a_job_without_an_address_starts_its_own_ray_beside_the_cluster(gcs: str, env: dict[str, str]) -> None:
    """With a `ray start` cluster on the machine, plain `ray.init(num_cpus=...)` joins it and fails
    ('num_cpus ... must not be provided'); ours starts its own, and joins only when told (an address, or
    $RAY_ADDRESS)."""
    env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", PROBE % (gcs, gcs)], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = dict(line.split() for line in out.stdout.splitlines() if line.startswith(("local ", "joined ", "env ")))
    assert seen["joined"] == seen["env"] == gcs and seen["local"] != gcs


def test_builder_args_are_checked_with_a_message(runs):
    from pipeline.serving.app import app

    with pytest.raises(ConfigError, match="expected run=<run folder>"):
        app({"rnu": "x"})
    with pytest.raises(ConfigError, match="expected run=<run folder>"):
        app({"run": str(runs[0]), "replicas": 3})
