"""Every ASR_ variable the manifests and Dockerfiles set is a real setting of that service.

pydantic-settings ignores unknown variables (`extra="ignore"`), so a typo such as
ASR_TRANSCRIPTION_COMPUTETYPE would silently fall back to the default. The valid names come
from the settings classes themselves (field names under the service's prefix, plus aliases
such as ASR_STATE_DIR), and the values must validate against them.
"""

from __future__ import annotations

import os
import re
from unittest import mock

import pytest
from deploy_helpers import (
    DOCKER,
    OVERLAYS,
    SERVICES,
    container_env,
    main_container,
    mesh_deployments,
    render,
    requires_kubectl,
)
from pydantic import AliasChoices
from pydantic_settings import BaseSettings


def settings_class(service: str) -> type[BaseSettings]:
    from asr_mesh.services.diarization.server import DiarizationSettings
    from asr_mesh.services.gateway.server import GatewaySettings
    from asr_mesh.services.http.settings import HttpSettings
    from asr_mesh.services.merge.server import MergeSettings
    from asr_mesh.services.preprocess.server import PreprocessSettings
    from asr_mesh.services.transcription.server import TranscriptionSettings

    return {
        "gateway": GatewaySettings,
        "preprocess": PreprocessSettings,
        "transcription": TranscriptionSettings,
        "diarization": DiarizationSettings,
        "merge": MergeSettings,
        "http": HttpSettings,
    }[service]


def env_names(cls: type[BaseSettings]) -> set[str]:
    """The environment variable names a settings class reads."""
    prefix = cls.model_config.get("env_prefix", "")
    names = set()
    for field_name, info in cls.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {c for c in alias.choices if isinstance(c, str)}
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def check_env(service: str, env: dict[str, str], where: str) -> None:
    cls = settings_class(service)
    valid = env_names(cls)
    asr = {k: v for k, v in env.items() if k.startswith("ASR_")}
    unknown = sorted(set(asr) - valid)
    assert not unknown, (
        f"{where}: not settings of {cls.__name__}: {unknown}; valid: {sorted(valid)}"
    )
    # The values parse: instantiate the class with exactly these variables.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ASR_")}
    with mock.patch.dict(os.environ, {**clean, **asr}, clear=True):
        settings = cls()
    for name in cls.model_fields:
        key = f"{cls.model_config['env_prefix']}{name}".upper()
        if (
            key in asr
            and isinstance(getattr(settings, name), int | float)
            and not isinstance(getattr(settings, name), bool)
        ):
            assert float(asr[key]) == getattr(settings, name), key


@pytest.mark.parametrize("service", SERVICES)
def test_env_names_come_from_the_settings_classes(service: str) -> None:
    names = env_names(settings_class(service))
    prefix = f"ASR_{service.upper()}_"
    assert {
        prefix + "HOST",
        prefix + "PORT",
        prefix + "METRICS_PORT",
        prefix + "GRACE_PERIOD_S",
        "ASR_STATE_DIR",
    } <= names
    assert prefix + "COMPUTETYPE" not in names


def test_a_typo_is_caught() -> None:
    with pytest.raises(AssertionError, match="ASR_TRANSCRIPTION_COMPUTETYPE"):
        check_env("transcription", {"ASR_TRANSCRIPTION_COMPUTETYPE": "float16"}, "typo")
    with pytest.raises(AssertionError, match="ASR_MERGE_PORT"):
        check_env("gateway", {"ASR_MERGE_PORT": "50051"}, "another service's variable")


@requires_kubectl
@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_manifest_env_vars_are_real_settings(overlay: str) -> None:
    docs = render(overlay)
    for name, deployment in mesh_deployments(docs).items():
        env = container_env(docs, main_container(deployment))
        check_env(name, env, f"{overlay}: {name}")


DOCKER_ENV = re.compile(r"^\s*(?:ENV\s+)?(ASR_[A-Z0-9_]+)=(\S+?)\s*\\?\s*$", re.M)


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_env_vars_are_real_settings(service: str) -> None:
    text = (DOCKER / f"{service}.Dockerfile").read_text(encoding="utf-8")
    env = dict(DOCKER_ENV.findall(text))
    assert f"ASR_{service.upper()}_PORT" in env, "the image listens on 50051 by itself"
    check_env(service, env, f"{service}.Dockerfile")
