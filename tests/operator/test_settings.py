"""Settings: defaults, environment, command line (which wins), and refusal of bad values."""

from __future__ import annotations

import pytest

from bertserve_operator import settings
from bertserve_operator.settings import Settings


def test_defaults_watch_everything_with_the_default_image() -> None:
    s = settings.load([], {})
    assert s == Settings()
    assert s.clusterwide and s.default_image == settings.DEFAULT_SERVER_IMAGE
    assert s.render_options().default_image == s.default_image


def test_environment_then_command_line() -> None:
    env = {"BERTSERVE_DEFAULT_IMAGE": "env:1", "BERTSERVE_NAMESPACES": "b, a", "BERTSERVE_VERBOSE": "true"}
    s = settings.load(["--default-image", "cli:2", "--workers", "7"], env)
    assert (s.default_image, s.namespaces, s.verbose, s.workers) == ("cli:2", ("a", "b"), True, 7)
    assert not s.clusterwide
    assert settings.load(["-n", "x", "--namespace", "y,z"], {}).namespaces == ("x", "y", "z")
    assert settings.load(["-A"], env).namespaces == ()
    assert settings.load(["--no-verbose"], env).verbose is False


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--log-format", "xml"], {}, "log_format"),
        ([], {"BERTSERVE_WORKERS": "0"}, "workers"),
        ([], {"BERTSERVE_VERBOSE": "maybe"}, "boolean"),
        (["--resync-seconds", "-1"], {}, "resync_seconds"),
        (["-A", "-n", "x"], {}, "mutually exclusive"),
    ],
)
def test_bad_settings_are_refused_at_start_up(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings.load(argv, env)


def test_main_exits_2_on_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    from bertserve_operator.__main__ import main

    assert main(["--log-format", "xml"]) == 2
    assert "log_format" in capsys.readouterr().err


def test_every_setting_has_help_text() -> None:
    import dataclasses

    for f in dataclasses.fields(Settings):
        assert f.metadata.get("help"), f.name


def test_author_limits_come_from_the_environment_and_reach_the_policy() -> None:
    default = settings.load([], {}).policy()
    assert (default.allow_host_path, default.allowed_service_accounts, default.allowed_runtime_classes) == (
        False,
        (),
        (),
    )
    env = {
        "BERTSERVE_ALLOW_HOST_PATH": "true",
        "BERTSERVE_ALLOWED_SERVICE_ACCOUNTS": "encoder, fetcher",
        "BERTSERVE_ALLOWED_RUNTIME_CLASSES": "nvidia",
        "BERTSERVE_NETWORK_POLICIES": "false",
    }
    loaded = settings.load([], env)
    policy = loaded.policy()
    assert policy.allow_host_path is True
    assert policy.allowed_service_accounts == ("encoder", "fetcher")
    assert policy.allowed_runtime_classes == ("nvidia",)
    assert loaded.render_options().network_policies is False
    assert settings.load(["--allowed-runtime-classes", "a,b"], {}).policy().allowed_runtime_classes == (
        "a",
        "b",
    )


def test_cpu_bertservers_get_the_cpu_image_tag_by_default_and_it_can_be_turned_off() -> None:
    s = settings.from_env({})
    assert s.default_cpu_image == settings.DEFAULT_SERVER_CPU_IMAGE == s.default_image + "-cpu"
    assert s.render_options().default_cpu_image == s.default_cpu_image
    mine = settings.from_env({"BERTSERVE_DEFAULT_CPU_IMAGE": "reg/server:2-cpu"})
    assert mine.render_options().default_cpu_image == "reg/server:2-cpu"
    assert settings.from_env({"BERTSERVE_DEFAULT_CPU_IMAGE": ""}).render_options().default_cpu_image == ""
