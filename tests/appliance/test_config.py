"""The appliance config: bad files give one error line naming key and line; good ones round-trip."""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from pathlib import Path

import pytest

from appliance import config as cfg
from appliance.config import Config, ConfigError, check_config, load_config, parse_config, render_toml

SHIPPED = Path(__file__).resolve().parents[2] / "systemd" / "appliance.toml"

GOOD = """\
# a bed in the test unit
[device]
id = "dev-7"
site = "nicu-a"
bed = "b3"

[camera]
source = 0
fps = 25   # integers are fine for numbers

[scoring]
cadence_s = 2
backends = ["onnxruntime", "torch"]
model_dir = "models"

[mqtt]
host = "broker.local"
port = 8883
message_expiry_s = 20
"""


def write(tmp_path: Path, text: str, name: str = "appliance.toml", mode: int = 0o644) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def error_of(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        check_config(path)
    message = str(info.value)
    assert "\n" not in message, "an error is one line"
    assert message.startswith(str(path)), message
    return info.value


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


def test_good_config_loads_with_types_and_relative_paths(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    config = check_config(path)
    assert config.device.site == "nicu-a" and config.topic_prefix == "neopain/nicu-a/b3"
    assert config.camera.source == 0 and isinstance(config.camera.fps, float) and config.camera.fps == 25.0
    assert isinstance(config.scoring.cadence_s, float)
    assert config.scoring.backends == ["onnxruntime", "torch"]
    assert config.scoring.model_dir == str(tmp_path.resolve() / "models")
    assert config.mqtt_client_id == "dev-7"
    # keys not given keep their documented defaults
    assert config.outbox == cfg.OutboxSection()


def test_valid_config_round_trips_through_render(tmp_path: Path) -> None:
    first = check_config(write(tmp_path, GOOD))
    again = check_config(write(tmp_path, render_toml(first, docs=False), name="again.toml"))
    assert again == first
    assert cfg.to_dict(again) == cfg.to_dict(first)


def test_shipped_default_config_passes_and_is_the_rendered_defaults() -> None:
    config = check_config(SHIPPED)
    assert config == Config()
    # The shipped file is generated from the dataclasses: every key documented, nothing stale.
    assert SHIPPED.read_text() == render_toml(), "regenerate systemd/appliance.toml with config.render_toml()"


def test_every_field_is_documented_and_bounded_where_numeric() -> None:
    for section in cfg.sections():
        for f in dataclasses.fields(section.default_factory):  # type: ignore[arg-type]
            assert len(f.metadata["doc"]) > 10, f"{section.name}.{f.name} lacks documentation"
            if f.type in ("int", "float") and f.metadata["choices"] is None:
                assert f.metadata["min"] is not None and f.metadata["max"] is not None, f"{section.name}.{f.name}"


def test_unknown_key_names_key_and_line(tmp_path: Path) -> None:
    text = GOOD.replace("port = 8883", "port = 8883\nkeep_alive = 30")
    err = error_of(tmp_path, text)
    assert err.key == "mqtt.keep_alive" and err.line == line_of(text, "keep_alive")
    assert "unknown key" in str(err) and f":{err.line}: mqtt.keep_alive:" in str(err)


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    text = GOOD + "\n[mqtt_tls]\nca = 'x'\n"
    err = error_of(tmp_path, text)
    assert err.key == "mqtt_tls" and err.line == line_of(text, "[mqtt_tls]")


def test_wrong_type_names_key_and_line(tmp_path: Path) -> None:
    text = GOOD.replace("port = 8883", 'port = "8883"')
    err = error_of(tmp_path, text)
    assert err.key == "mqtt.port" and err.line == line_of(text, 'port = "8883"')
    assert "integer" in err.message


def test_boolean_is_not_a_number(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("cadence_s = 2", "cadence_s = true"))
    assert err.key == "scoring.cadence_s" and "boolean" in err.message


def test_out_of_bounds_and_bad_choice(tmp_path: Path) -> None:
    text = GOOD.replace("port = 8883", "port = 70000")
    err = error_of(tmp_path, text)
    assert err.key == "mqtt.port" and "65535" in err.message and err.line == line_of(text, "70000")
    err = error_of(tmp_path, GOOD.replace('"torch"]', '"cuda"]'))
    assert err.key == "scoring.backends" and "'cuda'" in err.message
    err = error_of(tmp_path, GOOD.replace('"torch"]', '"onnxruntime"]'))
    assert err.key == "scoring.backends" and "repeat" in err.message
    err = error_of(tmp_path, GOOD.replace('bed = "b3"', 'bed = "b3/#"'))
    assert err.key == "device.bed"


def test_line_found_for_dotted_quoted_and_after_multiline_values(tmp_path: Path) -> None:
    text = (
        '[camera]\nsource = """v4l2src ! videoconvert\n[mqtt]\nport = 1 ! appsink"""\n'
        "[scoring]\nbackends = [\n  \"torch\",\n]\n"
        '"cadence_s" = 2\n'
        "[mqtt]\n"
        "port = 1883\n"
        'outbox.max_rows = 0\n'
    )
    lines = cfg.key_lines(text)
    assert lines[("camera", "source")] == 2
    assert ("mqtt", "port") in lines and lines[("mqtt", "port")] == 11, "text inside a string is not a key"
    assert lines[("scoring", "cadence_s")] == 9
    assert lines[("mqtt", "outbox", "max_rows")] == 12
    err = error_of(tmp_path, text)
    assert err.key == "camera.source" and err.line == 2 and "control characters" in err.message
    text = text.split("\n", 4)[4]  # without the [camera] table: the next error is the dotted key
    err = error_of(tmp_path, text)
    assert err.key == "mqtt.outbox" and err.line == line_of(text, "outbox.max_rows")


def test_toml_syntax_error_has_line(tmp_path: Path) -> None:
    text = GOOD.replace('site = "nicu-a"', "site = nicu-a")
    err = error_of(tmp_path, text)
    assert err.line == line_of(text, "site = nicu-a") and "not valid TOML" in err.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found") as info:
        check_config(tmp_path / "nope.toml")
    assert str(tmp_path / "nope.toml") in str(info.value)


def test_password_in_main_file_points_to_password_file(tmp_path: Path) -> None:
    text = GOOD + 'username = "bed3"\npassword = "hunter2"\n'
    err = error_of(tmp_path, text)
    assert err.key == "mqtt.password" and err.line == line_of(text, "password =")
    assert "password_file" in err.message and "hunter2" not in str(err)


def test_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    secret = write(tmp_path, "hunter2\n", name="mqtt-password", mode=0o644)
    text = GOOD + f'username = "bed3"\npassword_file = "{secret.name}"\n'
    err = error_of(tmp_path, text)
    assert err.key == "mqtt.password_file" and err.line == line_of(text, "password_file")
    assert "others" in err.message
    secret.chmod(0o600)
    config = check_config(tmp_path / "appliance.toml")
    assert cfg.mqtt_password(config) == "hunter2"
    assert "hunter2" not in repr(config)


def test_password_file_is_read_by_one_rule_for_check_and_run(tmp_path: Path) -> None:
    """`config check` and the publisher read a password file alike: its first line; an empty one is refused
    by check (before, check accepted it and `run` then failed)."""
    from appliance.mqtt.client import read_password

    secret = write(tmp_path, "first\nsecond\n", name="pw", mode=0o600)
    text = GOOD + f'username = "bed3"\npassword_file = "{secret.name}"\n'
    config = check_config(write(tmp_path, text))
    assert cfg.mqtt_password(config) == read_password(secret) == "first"
    secret.write_text("\n")
    err = error_of(tmp_path, text)
    assert err.key == "mqtt.password_file" and err.line == line_of(text, "password_file")
    assert "empty" in err.message
    with pytest.raises(ValueError, match="empty"):
        read_password(secret)


def test_unreadable_or_missing_secret_is_refused(tmp_path: Path) -> None:
    text = GOOD + 'username = "bed3"\npassword_file = "secrets/absent"\n'
    err = error_of(tmp_path, text)
    assert err.key == "mqtt.password_file" and "cannot read secret" in err.message
    (tmp_path / "secrets" / "absent").mkdir(parents=True)  # exists but is not a readable file
    err = error_of(tmp_path, text)
    assert err.key == "mqtt.password_file" and "not a regular file" in err.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_secret_without_read_permission(tmp_path: Path) -> None:
    write(tmp_path, "x", name="pw", mode=0o000)
    err = error_of(tmp_path, GOOD + 'username = "u"\npassword_file = "pw"\n')
    assert "Permission denied" in err.message


def test_systemd_credential_wins_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("from-systemd\n")
    (creds / "mqtt-password").chmod(0o400)
    path = write(tmp_path, GOOD + 'username = "bed3"\n')
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert cfg.mqtt_password(check_config(path)) == "from-systemd"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert cfg.mqtt_password(check_config(path)) is None


def test_tls_client_cert_needs_key_and_key_must_be_private(tmp_path: Path) -> None:
    write(tmp_path, "CA", name="ca.pem")
    write(tmp_path, "CERT", name="cert.pem")
    base = GOOD + 'tls_ca_file = "ca.pem"\ntls_cert_file = "cert.pem"\n'
    err = error_of(tmp_path, base)
    assert err.key == "mqtt.tls_cert_file" and "key" in err.message
    key = write(tmp_path, "KEY", name="key.pem", mode=0o604)
    err = error_of(tmp_path, base + 'tls_key_file = "key.pem"\n')
    assert err.key == "mqtt.tls_key_file" and "others" in err.message
    key.chmod(0o600)
    config = check_config(tmp_path / "appliance.toml")
    assert cfg.mqtt_tls_keyfile(config) == key.resolve()


def test_missing_certificate_names_key(tmp_path: Path) -> None:
    text = GOOD + 'tls_ca_file = "missing-ca.pem"\n'
    err = error_of(tmp_path, text)
    assert err.key == "mqtt.tls_ca_file" and err.line == line_of(text, "tls_ca_file")


def test_cross_key_rules(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("message_expiry_s = 20", "message_expiry_s = 1"))
    assert err.key == "mqtt.message_expiry_s" and "cadence" in err.message
    text = GOOD.replace("[camera]", "[camera]\nenabled = false") + (
        "[microphone]\nenabled = false\n[monitor]\nenabled = false\n")
    err = error_of(tmp_path, text)
    assert "nothing could be scored" in err.message


def test_config_writable_by_others_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD, mode=0o666)
    with pytest.raises(ConfigError, match="writable by others"):
        check_config(path)
    assert load_config(path).device.bed == "b3"  # syntax and values are fine: only the mode is wrong


def test_cli_check_prints_ok_or_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cfg.add_config_arguments(parser)
    good = write(tmp_path, GOOD)
    assert cfg.run_config_check(parser.parse_args(["--config", str(good)])) == 0
    assert capsys.readouterr().out == "OK\n"
    bad = write(tmp_path, GOOD.replace("fps = 25", "fps = 0"), name="bad.toml")
    assert cfg.run_config_check(parser.parse_args(["--config", str(bad)])) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err_lines = captured.err.splitlines()
    assert len(err_lines) == 1 and f"bad.toml:{line_of(GOOD, 'fps = 25')}: camera.fps:" in err_lines[0]


def test_parse_config_without_file() -> None:
    with pytest.raises(ConfigError, match=r"<config>:2: device.id"):
        parse_config('[device]\nid = ""\n')


# ------------------------------------------------------------------------------------- check refuses what run refuses
def _holds_float(tp: object) -> bool:
    return tp is float or any(_holds_float(a) for a in typing.get_args(tp))


def float_keys() -> list[tuple[str, str, bool]]:
    """(section, key, is_list) for every key of the spec that takes a number with a fraction: walked from the
    dataclasses, so a key added later is covered without touching this test."""
    found = []
    for s in cfg.sections():
        hints = typing.get_type_hints(s.default_factory)
        for f in dataclasses.fields(s.default_factory):
            if _holds_float(hints[f.name]):
                found.append((s.name, f.name, typing.get_origin(hints[f.name]) is list))
    return found


def test_every_float_key_refuses_nan_and_infinity_in_check_and_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``neopain config check`` and ``neopain run`` (their real entry points, in this process for speed; one
    subprocess pair below) both exit 2 with one line naming the key, for NaN, inf and -inf in every float key."""
    import appliance.daemon
    from appliance.cli import main

    class NeverStarted:  # if check let a value through, run must not start a daemon inside the test process
        def __init__(self, config: Config) -> None:
            raise AssertionError("config check accepted the value and run went on to start the daemon")

    monkeypatch.setattr(appliance.daemon, "Daemon", NeverStarted)
    keys = float_keys()
    assert ("camera", "fps") in {(s, k) for s, k, _ in keys} and len(keys) >= 7
    for section, key, is_list in keys:
        for value in ("nan", "inf", "-inf"):
            text = f"[{section}]\n{key} = {'[' + value + ']' if is_list else value}\n"
            path = write(tmp_path, text, name=f"{section}-{key}-{value}.toml")
            for command in (["config", "check"], ["run"]):
                assert main([*command, "--config", str(path)]) == 2, (command, section, key, value)
                captured = capsys.readouterr()
                lines = captured.err.splitlines()
                assert len(lines) == 1 and f"{path}:2: {section}.{key}: must be a finite number" in lines[0], \
                    (command, lines)


def test_nan_is_refused_by_the_installed_commands(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    path = write(tmp_path, "[scoring]\ncadence_s = nan\n")
    neopain = shutil.which("neopain", path=str(Path(sys.executable).parent)) or "neopain"
    for command in (["config", "check"], ["run"]):
        result = subprocess.run([neopain, *command, "--config", str(path)], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [f"{path}:2: scoring.cadence_s: must be a finite number, got nan"]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "fe80::1", "broker", "broker.local", "broker.local.",
                                  "mqtt-1.nicu.example.org", "a" * 63 + ".local", "10.0.0.254", "1x.example"])
def test_host_names_and_addresses_accepted(tmp_path: Path, host: str) -> None:
    assert check_config(write(tmp_path, f'[mqtt]\nhost = "{host}"\n')).mqtt.host == host


@pytest.mark.parametrize("host, why", [
    ("broker..local", "empty label"),
    ("a" * 64 + ".local", "label longer than 63 characters (64)"),
    (".broker", "empty label"),
    ("broker_1.local", "may only hold letters, digits and '-'"),
    ("-broker.local", "may only hold letters, digits and '-'"),
    ("broker.local-", "may only hold letters, digits and '-'"),
    ("bröker.local", "may only hold letters, digits and '-'"),
    ("10.0.0.256", "neither an IP address nor a host name"),
    ("mqtt://broker", "may only hold letters, digits and '-'"),
    (".".join(["abcdefghi"] * 26), "longer than 253 characters"),
    ("", "empty name"),
])
def test_mistyped_hosts_are_refused_naming_the_problem(tmp_path: Path, host: str, why: str) -> None:
    err = error_of(tmp_path, f'[mqtt]\nhost = "{host}"\n')
    assert err.key == "mqtt.host" and why in err.message


def test_a_10000_character_value_or_key_is_not_echoed_whole(tmp_path: Path) -> None:
    for text, key in ((f'[device]\nid = "{"x" * 10000}"\n', "device.id"),
                      (f'[camera]\nkind = "{"y" * 10000}"\n', "camera.kind"),
                      (f'[mqtt]\nhost = "{"z" * 10000}"\n', "mqtt.host"),
                      (f'[mqtt]\n{"k" * 10000} = 1\n', None)):
        line = error_of(tmp_path, text).one_line()
        assert len(line) < 700 and ("(10000 chars)" in line or "(10005 chars)" in line), line
        if key:
            assert f": {key}: " in line
