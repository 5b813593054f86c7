"""`bifusion rerun --in-docker` against a stub of the Docker Engine API on 127.0.0.1.

The stub answers the calls the Docker SDK makes (version, create, inspect, start, logs, wait, remove)
with canned replies and records them, so the container spec is checked as the engine would receive it.
"""

from __future__ import annotations

import http.server
import json
import logging
import re
import socket
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlparse

import pytest

from bifusion.components.config_schema import Config
from bifusion.components.docker_rerun import DockerEngineError, container_spec, rerun_in_docker
from bifusion.components.rerun import load_recorded_stage
from bifusion.components.tracking import stage_run
from bifusion.pipelines.cli import main

CONTAINER_ID = "c0ffee1234"
SECRET = "wJalrXUtnFEMI-very-secret"


@dataclass
class EngineStub:
    """Canned Docker Engine: what it answers and what it was asked."""

    exit_code: int = 0
    log_lines: tuple[bytes, ...] = (b"stage starting\n", b"stage done\n")
    create_error: tuple[int, str] | None = None
    start_error: tuple[int, str] | None = None
    calls: list[tuple[str, str, dict[str, list[str]], Any]] = field(default_factory=list)

    def paths(self, method: str) -> list[str]:
        return [path for m, path, _, _ in self.calls if m == method]

    def body_of(self, method: str, path: str) -> Any:
        return next(body for m, p, _, body in self.calls if m == method and p == path)


def _handler(stub: EngineStub) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one response per connection: the log stream ends when it closes

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, payload: Any = None, content_type: str = "application/json") -> None:
            data = b"" if payload is None else payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> None:
            url = urlparse(self.path)
            path = re.sub(r"^/v[0-9.]+", "", url.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            stub.calls.append((method, path, parse_qs(url.query), body))
            container = f"/containers/{CONTAINER_ID}"
            if path == "/version":
                self._answer(200, {"ApiVersion": "1.45", "Version": "26.1.0"})
            elif path == "/_ping":
                self._answer(200, b"OK", "text/plain")
            elif path == "/containers/create":
                if stub.create_error:
                    self._answer(stub.create_error[0], {"message": stub.create_error[1]})
                else:
                    self._answer(201, {"Id": CONTAINER_ID, "Warnings": []})
            elif path == f"{container}/json":
                self._answer(200, {"Id": CONTAINER_ID, "Name": "/rerun", "Config": {"Tty": False}, "State": {"Running": True}})
            elif path == f"{container}/start":
                if stub.start_error:
                    self._answer(stub.start_error[0], {"message": stub.start_error[1]})
                else:
                    self._answer(204)
            elif path == f"{container}/logs":
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.docker.multiplexed-stream")
                self.end_headers()
                for line in stub.log_lines:  # Docker's multiplexed frames: stream 1, 3 pad bytes, length
                    self.wfile.write(struct.pack(">BxxxL", 1, len(line)) + line)
                    self.wfile.flush()
            elif path == f"{container}/wait":
                self._answer(200, {"StatusCode": stub.exit_code})
            elif path == container and method == "DELETE":
                self._answer(204)
            else:
                self._answer(404, {"message": f"stub: no route for {method} {path}"})

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def do_DELETE(self) -> None:
            self._route("DELETE")

    return Handler


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[EngineStub]:
    stub = EngineStub()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    monkeypatch.delenv("DOCKER_CERT_PATH", raising=False)
    yield stub
    server.shutdown()
    server.server_close()


def _record_stage(config: Config, stage: str, tags: dict[str, str]) -> str:
    with stage_run(stage, config, {"train": config.train}, tags) as run:
        pass
    return run.run_id


@pytest.fixture
def train_run(make_config, tmp_path: Path) -> str:
    data = tmp_path / "prep" / "sv"
    data.mkdir(parents=True)
    return _record_stage(make_config(), "train_3d_sv", {
        "bifusion.input.data_uri": str(data), "bifusion.input.init_checkpoint_uri": "s3://bucket/ckpt/esam.pth",
        "bifusion.train_stage": "3d_sv",
    })


def test_container_spec_reaches_the_engine(engine: EngineStub, train_run: str, mlflow_uri: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsysbinary) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SECRET)
    monkeypatch.setenv("HOME_SECRET_NOT_PASSED", SECRET)
    engine.exit_code = 3
    caplog.set_level(logging.DEBUG)

    code = rerun_in_docker(train_run, ["train.lr=0.002"], tracking_uri=mlflow_uri, image="registry.local/bifusion:dev")

    assert code == 3
    assert engine.paths("POST") == ["/containers/create", f"/containers/{CONTAINER_ID}/start", f"/containers/{CONTAINER_ID}/wait"]
    assert engine.paths("DELETE") == [f"/containers/{CONTAINER_ID}"]
    (_, _, remove_query, _) = next(c for c in engine.calls if c[0] == "DELETE")
    assert remove_query["force"] == ["True"]
    (_, _, logs_query, _) = next(c for c in engine.calls if c[1].endswith("/logs"))
    assert logs_query["follow"] == ["1"] and logs_query["stdout"] == ["1"] and logs_query["stderr"] == ["1"]
    assert capsysbinary.readouterr().out == b"stage starting\nstage done\n"

    body = engine.body_of("POST", "/containers/create")
    assert body["Image"] == "registry.local/bifusion:dev"
    assert body["Entrypoint"] == ["bifusion"]
    command = body["Cmd"]
    assert command[:5] == ["rerun", "--mlflow-run", train_run, "--tracking-uri", mlflow_uri]
    output_uri = command[command.index("--output-uri") + 1]
    assert output_uri.startswith(str(tmp_path / "store" / "reruns" / "train_3d_sv"))
    assert Path(output_uri).is_dir()  # made on the host, owned by the caller
    sets = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
    assert sets == [f"workdir={tmp_path}", "train.lr=0.002"]
    env = dict(item.split("=", 1) for item in body["Env"])
    assert env["AWS_SECRET_ACCESS_KEY"] == SECRET and env["MLFLOW_TRACKING_TOKEN"] == SECRET
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert "HOME_SECRET_NOT_PASSED" not in env
    host = body["HostConfig"]
    database_folder = str(Path(mlflow_uri[len("sqlite:///"):]).parent)
    assert sorted(host["Binds"]) == sorted([f"{tmp_path}:{tmp_path}:rw", f"{database_folder}:{database_folder}:rw"])
    assert host["DeviceRequests"] == [{"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}]
    assert host["NetworkMode"] == "host"
    assert body["Labels"] == {"bifusion.rerun_of": train_run, "bifusion.stage": "train_3d_sv"}
    logged = caplog.text
    assert SECRET not in logged
    assert "AWS_SECRET_ACCESS_KEY" in logged and "MLFLOW_TRACKING_TOKEN" in logged


def test_cpu_stage_asks_for_no_gpu_and_cli_exits_with_the_code(engine: EngineStub, make_config, mlflow_uri: str) -> None:
    run_id = _record_stage(make_config(), "prep", {"bifusion.input.raw_uri": "s3://bucket/raw"})
    with pytest.raises(SystemExit) as exited:
        main(["rerun", "--mlflow-run", run_id, "--tracking-uri", mlflow_uri, "--in-docker", "--image", "img:1"])
    assert exited.value.code == 0
    body = engine.body_of("POST", "/containers/create")
    assert body["HostConfig"].get("DeviceRequests", []) == []
    assert body["Cmd"][:3] == ["rerun", "--mlflow-run", run_id]


def test_gpu_count_is_passed(engine: EngineStub, train_run: str, mlflow_uri: str) -> None:
    rerun_in_docker(train_run, tracking_uri=mlflow_uri, image="img:1", gpus="2")
    assert engine.body_of("POST", "/containers/create")["HostConfig"]["DeviceRequests"][0]["Count"] == 2
    with pytest.raises(DockerEngineError, match="--gpus 'some'"):
        rerun_in_docker(train_run, tracking_uri=mlflow_uri, image="img:1", gpus="some")


def test_missing_image_says_how_to_get_it(engine: EngineStub, train_run: str, mlflow_uri: str) -> None:
    engine.create_error = (404, "No such image: img:missing")
    with pytest.raises(DockerEngineError, match=r"image img:missing is not on the Docker engine: build it with `make images` or fetch it with `docker pull img:missing`"):
        rerun_in_docker(train_run, tracking_uri=mlflow_uri, image="img:missing")
    assert engine.paths("DELETE") == []  # nothing was created


def test_missing_gpu_runtime_is_explained_and_container_removed(engine: EngineStub, train_run: str, mlflow_uri: str) -> None:
    engine.start_error = (500, 'failed to create task for container: could not select device driver "" with capabilities: [[gpu]]')
    with pytest.raises(DockerEngineError, match="Install the NVIDIA Container Toolkit and restart Docker, or rerun on CPU with --gpus 0"):
        rerun_in_docker(train_run, tracking_uri=mlflow_uri, image="img:1")
    assert engine.paths("DELETE") == [f"/containers/{CONTAINER_ID}"]


def test_engine_down_names_docker_host(train_run: str, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{port}")
    with pytest.raises(DockerEngineError, match=f"no Docker engine reachable at tcp://127.0.0.1:{port}"):
        rerun_in_docker(train_run, tracking_uri=mlflow_uri, image="img:1")


def test_file_inputs_and_relative_database_are_mounted(make_config, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                                      monkeypatch: pytest.MonkeyPatch, mlflow_uri: str) -> None:
    raw = tmp_path_factory.mktemp("elsewhere") / "raw"
    raw.mkdir()
    run_id = _record_stage(make_config(), "prep", {"bifusion.input.raw_uri": raw.as_uri()})
    missing = tmp_path_factory.getbasetemp() / "not-there"
    recorded = load_recorded_stage(run_id, mlflow_uri)
    database_folder = Path(mlflow_uri[len("sqlite:///"):]).parent
    monkeypatch.chdir(database_folder.parent)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)

    spec = container_spec(recorded, f"sqlite:///{database_folder.name}/mlflow.db", output_uri="s3://bucket/out",
                          inputs={"raw_uri": str(missing)}, gpus="0")

    assert set(spec.volumes) == {str(tmp_path), str(raw), str(database_folder)}  # not the missing input
    assert all(mount == {"bind": host, "mode": "rw"} for host, mount in spec.volumes.items())
    assert spec.command[spec.command.index("--tracking-uri") + 1] == mlflow_uri  # absolute inside the container
    assert spec.command[spec.command.index("--output-uri") + 1] == "s3://bucket/out"
    assert spec.environment["AWS_SECRET_ACCESS_KEY"] == SECRET
    assert SECRET not in repr(spec)
