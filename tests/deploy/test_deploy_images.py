"""The Dockerfiles: one per service, multi-stage, non-root, only that service's extra, and a
transcription image (and extra) without torch. Parsed statically: CI has no Docker engine.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from importlib import metadata

import pytest
import tomllib
from deploy_helpers import DOCKER, GRPC_PORT, METRICS_PORT, REPO, SERVICES
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

FORBIDDEN_IN_TRANSCRIPTION = {
    "torch",
    "torchaudio",
    "torchvision",
    "pyannote-audio",
    "lightning",
    "pytorch-lightning",
    "resemblyzer",
}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
PROJECT = canonicalize_name(PYPROJECT["project"]["name"])


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their instructions (continuation lines joined, comments dropped)."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.I)
            assert match, line
            stages.append(Stage(match.group(2) or str(len(stages)), match.group(1)))
        elif stages:
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def stages_of(name: str) -> list[Stage]:
    return parse_dockerfile((DOCKER / f"{name}.Dockerfile").read_text(encoding="utf-8"))


def effective(stages: list[Stage], target: Stage, keyword: str) -> list[str]:
    """Instructions of `keyword` a target inherits through `FROM <stage>` chains, base first."""
    by_name = {s.name: s for s in stages}
    chain = [target]
    while chain[-1].base in by_name:
        chain.append(by_name[chain[-1].base])
    return [args for stage in reversed(chain) for args in stage.all(keyword)]


def runtime_targets(stages: list[Stage]) -> list[Stage]:
    """The stages an image is tagged from: the last one (default target) and any cuda target."""
    return [stages[-1], *[s for s in stages if s.name == "cuda"]]


def project_extras(stages: list[Stage]) -> set[str]:
    """Extras of the project itself installed by `pip install ".[...]"` in any stage."""
    found = set()
    for stage in stages:
        for run in stage.all("RUN"):
            for extras in re.findall(r"""pip install[^&;]*?["']?\.\[([\w,-]+)\]""", run):
                found |= set(extras.split(","))
            assert not re.search(r"pip install[^&;]*\s\.(\s|$|&)", run), (
                "the project without an extra pulls nothing useful: name the service's extra"
            )
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_per_service(service: str) -> None:
    stages = stages_of(service)
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    assert project_extras(stages) == {service}, "only the service's own extra"
    for target in runtime_targets(stages):
        users = effective(stages, target, "USER")
        assert users, f"{target.name}: no USER (would run as root)"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) != 0, (
            f"{target.name}: USER must be a numeric non-root uid (kubelet checks runAsNonRoot by uid)"
        )
        assert (
            effective(stages, target, "ENTRYPOINT")[-1]
            == f'["python", "-m", "asr_mesh.services.{service}"]'
        )
        exposed = " ".join(effective(stages, target, "EXPOSE")).split()
        assert {str(GRPC_PORT), str(METRICS_PORT)} <= set(exposed)
        copies = effective(stages, target, "COPY")
        assert any(c.startswith("--from=build") and "/opt/venv" in c for c in copies), (
            "the runtime copies the venv from the build stage"
        )
        assert all(c.startswith("--from=") for c in copies), (
            "the runtime takes only build outputs, no sources from the context"
        )


@pytest.mark.parametrize("service", SERVICES)
def test_build_context_allowlist_covers_every_copy(service: str) -> None:
    """<Dockerfile>.dockerignore: allowlist the sources; keep .venv, models, .git, .gitignore out."""
    lines = [
        ln.strip()
        for ln in (DOCKER / f"{service}.Dockerfile.dockerignore")
        .read_text(encoding="utf-8")
        .splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "**", "start from an empty context"
    allowed = [ln[1:].rstrip("/") for ln in lines if ln.startswith("!")]
    for path in (".venv", "models", "gen", ".git", ".gitignore", "out"):
        assert not any(fnmatch.fnmatch(path, a) or a == path for a in allowed), path
    for stage in stages_of(service):
        for args in stage.all("COPY"):
            if "--from=" in args:
                continue
            *sources, _dest = args.split()
            for source in sources:
                source = source.rstrip("/")
                assert any(source == a or source.startswith(a + "/") for a in allowed), (
                    f"COPY {source} is outside the build-context allowlist"
                )
                assert (REPO / source).exists(), f"COPY {source}: no such path"


def test_transcription_image_has_no_torch() -> None:
    text = (DOCKER / "transcription.Dockerfile").read_text(encoding="utf-8")
    stages = parse_dockerfile(text)
    assert {s.name for s in stages} >= {"build", "models", "cuda", "cpu"}
    assert stages[-1].name == "cpu", "CPU is the default target; --target cuda for GPUs"
    for stage in stages:
        for run in stage.all("RUN"):
            for command in re.split(r"&&|;", run):
                if "pip install" in command:
                    words = set(re.findall(r"[\w.-]+", command.lower()))
                    assert not words & (FORBIDDEN_IN_TRANSCRIPTION | {"diarization", "all"}), (
                        command
                    )
    # The models extra is read from pyproject, never re-pinned by hand.
    assert "['optional-dependencies']['models']" in text
    # LD_LIBRARY_PATH points into the venv of the base image's Python version.
    python = re.search(r"ARG PYTHON_IMAGE=python:(\d+\.\d+)", text).group(1)
    ld_path = " ".join(effective(stages, next(s for s in stages if s.name == "cuda"), "ENV"))
    assert f"/opt/venv/lib/python{python}/site-packages/nvidia/cudnn/lib" in ld_path


def _expand(extra: str) -> list[str]:
    """An extra's requirements, self-references (asr-mesh[a,b]) expanded."""
    out = []
    for raw in EXTRAS[extra]:
        req = Requirement(raw)
        if canonicalize_name(req.name) == PROJECT:
            for sub in req.extras:
                out += _expand(sub)
        else:
            out.append(raw)
    return out


def _closure(requirements: list[str]) -> dict[str, str]:
    """Installed distributions a requirement list pulls in, transitively (name -> required by)."""
    seen: dict[str, str] = {}
    queue = [(Requirement(r), "pyproject") for r in requirements]
    missing = []
    while queue:
        req, parent = queue.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen[name] = parent
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            missing.append(req.name)
            continue
        for raw in requires:
            sub = Requirement(raw)
            wanted = [""] + sorted(req.extras)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in wanted):
                queue.append((sub, name))
    assert not missing, f"not installed, cannot check the dependency tree: {missing} (make setup)"
    return seen


def test_transcription_extra_never_pulls_torch() -> None:
    direct = {canonicalize_name(Requirement(r).name) for r in _expand("transcription")}
    assert not direct & FORBIDDEN_IN_TRANSCRIPTION
    tree = _closure(_expand("transcription"))
    leaked = {name: by for name, by in tree.items() if name in FORBIDDEN_IN_TRANSCRIPTION}
    assert not leaked, f"the transcription extra pulls {leaked}"
    assert "ctranslate2" in tree and "faster-whisper" in tree


def test_diarization_extra_is_where_torch_lives() -> None:
    """The other side of the split: the check above would pass vacuously if nothing had torch."""
    assert "torch" in {canonicalize_name(Requirement(r).name) for r in _expand("diarization")}


def test_named_build_contexts_default_to_placeholders() -> None:
    for dockerfile, context in (
        ("transcription", "extra-models"),
        ("diarization", "pyannote"),
        ("models", "extra-models"),
        ("models", "pyannote"),
    ):
        stage = next(s for s in stages_of(dockerfile) if s.name == context)
        assert stage.base == "scratch", f"{dockerfile}: --build-context {context}=DIR replaces it"
        assert (DOCKER / context / "README.md").is_file()


def test_models_image_for_init_containers() -> None:
    stages = stages_of("models")
    final = stages[-1]
    uid = effective(stages, final, "USER")[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    copies = " ".join(final.all("COPY"))
    for path in ("/models/whisper", "/models/pyannote"):
        assert path in copies
