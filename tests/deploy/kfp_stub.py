"""A stand-in for the Kubeflow Pipelines v2beta1 REST API on 127.0.0.1: keeps pipelines, versions,
experiments and runs in memory, answers the calls `kfp.Client` makes, and records every request.

Behaves like the real server where the upload logic depends on it: a new pipeline gets a default version
named like the pipeline with the pipeline's description, and a duplicate version name is an error.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

API = "/apis/v2beta1"


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: dict[str, str]
    body: bytes


@dataclass
class KfpState:
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # pipeline id -> versions
    packages: dict[str, bytes] = field(default_factory=dict)  # version id -> uploaded YAML
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    ids: Any = field(default_factory=itertools.count)

    def new_id(self, kind: str) -> str:
        return f"{kind}-{next(self.ids)}"


def _display_name_filter(query: dict[str, str]) -> str | None:
    if "filter" not in query:
        return None
    predicates = json.loads(query["filter"])["predicates"]
    return next(p["stringValue"] for p in predicates if p["key"] == "display_name")


def _uploaded_file(headers: Any, body: bytes) -> bytes:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body
    )
    return next(part.get_payload(decode=True) for part in message.iter_parts())


class _Handler(BaseHTTPRequestHandler):
    state: KfpState
    lock: threading.Lock

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        url = urlparse(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.lock:
            self.state.calls.append(Call(method, url.path, query, body))
            status, payload = self._route(method, url.path.removeprefix(API), query, body)
        self._answer(status, payload)

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        state = self.state
        if (method, path) == ("GET", "/healthz"):
            return 200, {"multi_user": False}
        if (method, path) == ("GET", "/pipelines"):
            name = _display_name_filter(query)
            found = [p for p in state.pipelines.values() if name is None or p["display_name"] == name]
            return 200, {"pipelines": found, "total_size": len(found)} if found else {}
        if (method, path) == ("POST", "/pipelines/upload"):
            if any(p["display_name"] == query["name"] for p in state.pipelines.values()):
                return 409, {"error": f"pipeline {query['name']} already exists"}
            pipeline = {"pipeline_id": state.new_id("pipeline"), "display_name": query["name"],
                        "description": query.get("description", "")}
            state.pipelines[pipeline["pipeline_id"]] = pipeline
            state.versions[pipeline["pipeline_id"]] = []
            self._add_version(pipeline["pipeline_id"], query["name"], pipeline["description"], body)
            return 200, pipeline
        if (method, path) == ("POST", "/pipelines/upload_version"):
            pipeline_id = query["pipelineid"]
            if any(v["display_name"] == query["name"] for v in state.versions[pipeline_id]):
                return 409, {"error": f"version {query['name']} already exists"}
            return 200, self._add_version(pipeline_id, query["name"], query.get("description", ""), body)
        match = re.fullmatch(r"/pipelines/([^/]+)/versions", path)
        if method == "GET" and match:
            versions = state.versions[match.group(1)]
            return 200, {"pipeline_versions": versions, "total_size": len(versions)} if versions else {}
        if (method, path) == ("GET", "/experiments"):
            name = _display_name_filter(query)
            found = [e for e in state.experiments.values() if e["display_name"] == name]
            return 200, {"experiments": found} if found else {}
        if (method, path) == ("POST", "/experiments"):
            experiment = {**json.loads(body), "experiment_id": state.new_id("experiment")}
            state.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if (method, path) == ("POST", "/runs"):
            run = {**json.loads(body), "run_id": state.new_id("run"), "state": "PENDING"}
            state.runs[run["run_id"]] = run
            return 200, run
        return 404, {"error": f"stub has no {method} {path}"}

    def _add_version(self, pipeline_id: str, name: str, description: str, body: bytes) -> dict[str, Any]:
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": self.state.new_id("version"),
                   "display_name": name, "description": description}
        self.state.versions[pipeline_id].append(version)
        self.state.packages[version["pipeline_version_id"]] = _uploaded_file(self.headers, body)
        return version

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


class KfpStub:
    """Context manager: `with KfpStub() as stub: kfp.Client(host=stub.url)`; `stub.state` holds what it saw."""

    def __init__(self) -> None:
        self.state = KfpState()
        handler = type("Handler", (_Handler,), {"state": self.state, "lock": threading.Lock()})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> KfpStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def calls(self, method: str, path: str) -> list[Call]:
        return [c for c in self.state.calls if c.method == method and c.path == API + path]
