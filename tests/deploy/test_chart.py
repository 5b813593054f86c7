"""The Helm chart rendered, linted and schema-checked offline (helm-python-sdk embeds Helm's engine)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from bifusion.pipelines.cli import build_parser, main
from bifusion.pipelines.cluster import load_cluster_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "bifusion-pipeline"
GPU_HEAVY = CHART / "ci" / "gpu-heavy-values.yaml"


def render(values: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Template file name -> its rendered manifests (NOTES.txt as {'text': ...})."""
    chart = helm.Chart.load(CHART)
    chart.validate_schema(values or {})
    rendered = chart.render(values or {}, name="bf", namespace="ml", is_install=True)
    out: dict[str, list[dict[str, Any]]] = {}
    for name, text in rendered.items():
        short = name.removeprefix("bifusion-pipeline/templates/")
        out[short] = [{"text": text}] if short.endswith(".txt") else [d for d in yaml.safe_load_all(text) if d]
    return out


def by_kind(manifests: dict[str, list[dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [doc for docs in manifests.values() for doc in docs if doc.get("kind") == kind]


def gpu_heavy_values() -> dict[str, Any]:
    return yaml.safe_load(GPU_HEAVY.read_text())


@pytest.mark.parametrize("values_file", [None, GPU_HEAVY])
def test_chart_lints_clean(values_file: Path | None) -> None:
    values = yaml.safe_load(values_file.read_text()) if values_file else None
    report = helm.lint(CHART, values, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_default_install_uploads_with_a_hook_job_and_runs_mlflow() -> None:
    manifests = render()
    (job,) = by_kind(manifests, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/bifusion/bifusion-pipeline:0.1.0"
    assert job["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 1000
    args = build_parser().parse_args(container["args"])  # the hook's command exists in the CLI
    assert (args.pipeline_command, args.host, args.name) == ("upload", "http://ml-pipeline.kubeflow.svc.cluster.local:8888", "bifusion")
    assert args.cluster == "/etc/bifusion/cluster.yaml"
    assert args.overrides == ["storage.root=s3://bifusion/store"]
    assert args.version_prefix == "bifusion-0.1.0"

    (deployment,) = by_kind(manifests, "Deployment")
    mlflow = deployment["spec"]["template"]["spec"]["containers"][0]
    allowed = next(a for a in mlflow["args"] if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert {"bf-bifusion-pipeline-mlflow:*", "bf-bifusion-pipeline-mlflow.ml.svc.cluster.local:*"} <= set(allowed)
    assert "--artifacts-destination=s3://bifusion/mlflow" in mlflow["args"]
    env = {e["name"]: e for e in mlflow["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"] == "sqlite:////mlflow/mlflow.db"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "bifusion-s3", "key": "AWS_ACCESS_KEY_ID"}
    (service,) = by_kind(manifests, "Service")
    assert service["spec"]["ports"][0]["port"] == 5000
    (test_pod,) = by_kind(manifests, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "helm test bf" in manifests["NOTES.txt"][0]["text"]


def test_rendered_cluster_settings_load_and_follow_the_values(tmp_path: Path) -> None:
    (configmap,) = by_kind(render(gpu_heavy_values()), "ConfigMap")
    path = tmp_path / "cluster.yaml"
    path.write_text(configmap["data"]["cluster.yaml"])
    settings = load_cluster_settings(path)
    assert settings.image.reference == "registry.example.com/ml/bifusion-pipeline:0.2.0"
    assert settings.image.pull_secrets == ["regcred"]
    assert settings.s3.endpoint_url == "http://minio.minio.svc.cluster.local:9000"
    assert settings.mlflow.tracking_uri == "http://mlflow.mlflow.svc.cluster.local:5000"
    train = settings.for_stage("train_bifusion_mv")
    assert (train.gpu.count, train.gpu.resource, train.gpu.product) == (8, "nvidia.com/gpu", "NVIDIA-H100-80GB-HBM3")
    assert train.node_selector == {"pool": "gpu", "zone": "eu-1"}  # GPU selector on top of the global one
    assert [t.key for t in train.tolerations] == ["spot", "nvidia.com/gpu"]
    assert (train.cpu_request, train.memory_limit, train.retry.count) == ("48", "480Gi", 3)
    assert train.caching is False  # kept from configs/cluster/default.yaml
    assert settings.for_stage("evaluate_3d_sv").gpu.count == 2
    prep = settings.for_stage("prep")
    assert (prep.gpu.count, prep.node_selector, [t.key for t in prep.tolerations]) == (0, {"zone": "eu-1"}, ["spot"])


def test_gpu_heavy_values_render_a_private_registry_and_external_mlflow() -> None:
    manifests = render(gpu_heavy_values())
    assert by_kind(manifests, "Deployment") == [] and by_kind(manifests, "Service") == []
    (job,) = by_kind(manifests, "Job")
    spec = job["spec"]["template"]["spec"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["containers"][0]["image"] == "registry.example.com/ml/bifusion-pipeline:0.2.0"
    args = build_parser().parse_args(spec["containers"][0]["args"])
    assert args.overrides == ["storage.root=s3://ml-data/bifusion", "train.max_iterations=40000"]
    assert args.config == ["base"]


def test_precompiled_mode_uploads_the_configmaps_pipeline_verbatim() -> None:
    manifests = render({"pipeline": {"compileInJob": False}})
    (job,) = by_kind(manifests, "Job")
    args = build_parser().parse_args(job["spec"]["template"]["spec"]["containers"][0]["args"])
    assert args.package == Path("/etc/bifusion/pipeline.yaml") and args.cluster is None
    (configmap,) = by_kind(manifests, "ConfigMap")
    assert configmap["data"]["pipeline.yaml"].strip() == (CHART / "files" / "pipeline.yaml").read_text().strip()


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"kfp": {"host": "ml-pipeline:8888"}}, "/kfp/host"),
        ({"gpu": {"counts": {"trian": 1}}}, "trian"),
        ({"gpu": {"counts": {"train": -1}}}, "/gpu/counts/train"),
        ({"stageOverrides": {"train": {"memory_limit": "64 GB"}}}, "/stageOverrides/train/memory_limit"),
        ({"s3": {"bucket": "Not_A_Bucket"}}, "/s3/bucket"),
        ({"mlflow": {"server": {"enabled": "yes"}}}, "/mlflow/server/enabled"),
        ({"image": {"tags": "x"}}, "tags"),
    ],
)
def test_bad_values_fail_the_schema(values: dict[str, Any], where: str) -> None:
    chart = helm.Chart.load(CHART)
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        chart.validate_schema(values)


def test_committed_pipeline_matches_the_code(tmp_path: Path) -> None:
    """files/pipeline.yaml is what `make chart-pipeline` writes today (run it after changing stages or configs)."""
    makefile = (ROOT / "Makefile").read_text()
    arguments = shlex.split(re.search(r"^CHART_PIPELINE_ARGS := (.*)$", makefile, re.M).group(1))
    output = tmp_path / "pipeline.yaml"
    main(["pipeline", "compile", *arguments, "--output", str(output)])
    assert output.read_text() == (CHART / "files" / "pipeline.yaml").read_text(), "run `make chart-pipeline`"
