"""What can be checked of the stage image without a Docker engine: the Dockerfile's inputs exist and reach the
build context, its pip lines and lock parse and cover the project's dependencies, and every command the
image, the chart and the pipeline start exists in the `bifusion` CLI."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bifusion.pipelines.cli import build_parser
from bifusion.pipelines.cluster import STAGE_NAMES

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def ignored_by_dockerignore(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes (enough for our allow-list file)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        core = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, core) or path.startswith(core + "/"):
            ignored = not negate
    return ignored


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "docker" / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"docker/requirements.txt: {line!r} is not pinned with =="
            pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    copies = [args.split() for op, args in instructions(DOCKERFILE) if op == "COPY"]
    assert copies, "the Dockerfile copies nothing"
    for *sources, _destination in copies:
        for source in sources:
            assert not source.startswith("--"), f"COPY flag {source} not expected"
            assert (ROOT / source).exists(), f"docker/Dockerfile COPYs {source}, which does not exist"
            assert not ignored_by_dockerignore(source, patterns), f".dockerignore keeps {source} out of the build context"
    assert ignored_by_dockerignore(".venv", patterns) and ignored_by_dockerignore("bifusion-work/store", patterns)


def test_pip_install_lines_parse_and_the_lock_covers_the_project() -> None:
    pip_lines = [shlex.split(args) for op, args in instructions(DOCKERFILE) if op == "RUN" and "pip install" in args]
    assert pip_lines
    for words in pip_lines:
        for command in " ".join(words).split("&&"):
            parts = command.split()
            if "pip" not in parts or "install" not in parts:
                continue
            operands = parts[parts.index("install") + 1:]
            for operand in operands:
                if operand.startswith("-") or operand.startswith("/") or operand == "-r":
                    continue
                Requirement(operand)  # raises on a malformed requirement
            if "-r" in operands:
                assert "--no-deps" in operands, "the lock is installed with --no-deps, so it must be complete"
    pins = lock_pins()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    image_inputs = [line for line in (ROOT / "docker" / "requirements.in").read_text().splitlines() if line.strip() and not line.startswith("#")]
    for text in [*pyproject["project"]["dependencies"], *pyproject["build-system"]["requires"], *image_inputs]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{text} is not in docker/requirements.txt: run docker/lock_requirements.py"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"lock pins {name}=={pins[name]}, outside {text}"
    assert {"torch", "torchvision", "spconv-cu126", "open-clip-torch"} <= set(pins)


def test_image_runs_as_uid_1000_with_the_bifusion_entrypoint() -> None:
    steps = instructions(DOCKERFILE)
    assert steps[-1] == ("CMD", '["--help"]')
    assert ("ENTRYPOINT", '["bifusion"]') in steps
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1] == "1000:1000"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "bifusion" in scripts


# The command each pipeline stage's work is reachable by outside KFP (`docker run IMAGE <command> --help`).
STAGE_COMMANDS = {"synth": ["synth"], "prep": ["prep", "--input", "u"], "clip_precompute": ["clip-precompute"]}


@pytest.mark.parametrize("stage", [s for s in STAGE_NAMES if s != "summary"])
def test_every_pipeline_stage_has_a_cli_command(stage: str) -> None:
    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    if stage.startswith("train_"):
        train_stage = stage.removeprefix("train_")
        stage_choices = next(a for a in subcommands["train"]._actions if a.dest == "stage").choices
        assert train_stage in stage_choices, f"`bifusion train --stage {train_stage}` is not accepted"
    elif stage.startswith("evaluate_"):
        assert "evaluate" in subcommands
    else:
        command = STAGE_COMMANDS[stage][0]
        assert command in subcommands, f"no `bifusion {command}` for pipeline stage {stage}"


def test_makefile_images_target_uses_registry_and_tag() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^REGISTRY \?= ", makefile, re.M) and re.search(r"^TAG \?= ", makefile, re.M)
    recipe = makefile.split("\nimages:", 1)[1].split("\n\n", 1)[0]
    assert "docker build -f docker/Dockerfile" in recipe and "$(IMAGE)" in recipe


def test_bifusion_commands_in_the_deploy_docs_parse() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    commands = [line for block in blocks for line in block.replace("\\\n", " ").splitlines() if line.startswith(".venv/bin/bifusion ")]
    assert len(commands) >= 2
    for command in commands:
        build_parser().parse_args(shlex.split(command)[1:])  # SystemExit on an unknown command or flag


def test_the_copied_sources_alone_build_the_package_with_its_data(tmp_path: Path) -> None:
    """What the Dockerfile's project step does, minus Docker: build from only the COPYed files, no network."""
    source = tmp_path / "src"
    source.mkdir()
    copies = [args.split() for op, args in instructions(DOCKERFILE) if op == "COPY" and args.split()[-1].startswith("/tmp/src")]
    for *items, destination in copies:
        for item in items:
            target = source / Path(destination).relative_to("/tmp/src") if not destination.endswith("/") else source / Path(item).name
            if (ROOT / item).is_dir():
                shutil.copytree(ROOT / item, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / item, target)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet", "-w", str(tmp_path / "dist"), str(source)],
        check=True,
    )
    (built,) = (tmp_path / "dist").glob("bifusion_pipeline-*.whl")
    names = set(zipfile.ZipFile(built).namelist())
    assert {"bifusion/configs/base.yaml", "bifusion/configs/cluster/default.yaml", "bifusion/components/train/launch.py",
            "bifusion/pipelines/cluster.py", "bifusion/pipelines/submit.py"} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "bifusion = bifusion.pipelines.cli:main" in zipfile.ZipFile(built).read(entry_points).decode()
