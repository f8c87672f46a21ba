"""``telemaint-server`` commands run in-process: init, user add, enrollment-code, errors."""

from __future__ import annotations

import io
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from server.auth import verify_password
from server.cli import main
from server.db import make_engine, make_sessionmaker
from server.migrations import LATEST_SCHEMA_VERSION
from server.models import AuditEvent, Customer, User


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("TELEMAINT_SERVER_"):
            monkeypatch.delenv(name)


@pytest.fixture
def args(db_url: str, tmp_path: Path) -> list[str]:
    return ["--db", db_url, "--data-dir", str(tmp_path / "state")]


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))


def test_init_creates_secret_and_schema_and_is_repeatable(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", *args]) == 0
    out = capsys.readouterr().out
    assert "created secret key" in out and f"schema at version {LATEST_SCHEMA_VERSION}" in out
    assert stat.S_IMODE((tmp_path / "state" / "secret_key").stat().st_mode) == 0o600
    assert main(["init", *args]) == 0
    assert f"schema already at version {LATEST_SCHEMA_VERSION}" in capsys.readouterr().out


def test_init_creates_the_default_sqlite_file_in_the_data_dir(tmp_path: Path) -> None:
    assert main(["init", "--data-dir", str(tmp_path / "var")]) == 0
    assert (tmp_path / "var" / "server.db").exists()


def test_user_add_reads_the_password_from_stdin(
    args: list[str], db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["init", *args])
    _stdin(monkeypatch, "s3cret-enough\n")
    assert main(["user", "add", "carl", "--role", "customer", "--customer", "Acme", *args, "--password-stdin"]) == 0
    assert "added customer carl of customer Acme" in capsys.readouterr().out
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as session:
        user = session.scalar(select(User).where(User.name == "carl"))
        assert user is not None and user.role == "customer"
        assert user.password_hash.startswith("scrypt$n=16384,r=8,p=1$")
        assert verify_password("s3cret-enough", user.password_hash)
        assert not verify_password("s3cret-enough ", user.password_hash)
        customer = session.get(Customer, user.customer_id)
        assert customer is not None and customer.name == "Acme"
        assert session.scalar(select(AuditEvent.action).where(AuditEvent.target == "user:carl")) == "user.add"
    engine.dispose()


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        (["anna", "--role", "support"], "short\n", "at least 8 characters"),
        (["carl", "--role", "customer"], "long enough\n", "needs --customer"),
        (["anna", "--role", "support", "--customer", "Acme"], "long enough\n", "only for --role customer"),
        (["carl", "--role", "customer", "--customer", "Ac\u202eme"], "long enough\n", "bidirectional control"),
        (["carl", "--role", "customer", "--customer", "Ac\u200bme"], "long enough\n", "invisible"),
    ],
)
def test_user_add_refuses_with_one_line(
    args: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    stdin: str,
    message: str,
) -> None:
    main(["init", *args])
    capsys.readouterr()
    _stdin(monkeypatch, stdin)
    assert main(["user", "add", *argv, *args]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_user_add_refuses_a_duplicate(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["init", *args])
    _stdin(monkeypatch, "long enough\n")
    assert main(["user", "add", "anna", "--role", "admin", *args]) == 0
    _stdin(monkeypatch, "long enough\n")
    assert main(["user", "add", "anna", "--role", "admin", *args]) == 1
    assert "user 'anna' exists already" in capsys.readouterr().err
    _stdin(monkeypatch, "long enough\n")
    assert main(["user", "add", "Anna", "--role", "customer", "--customer", "Acme", *args]) == 1
    assert "user 'anna' exists already (names differ in case only)" in capsys.readouterr().err


def test_enrollment_code_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    main(["init", *args])
    capsys.readouterr()
    before = datetime.now(UTC)
    assert main(["enrollment-code", "--customer", "Acme", "--ttl", "2h", "--json", *args]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"code", "customer", "expires_at"}
    assert len(data["code"]) == 14 and data["code"].count("-") == 2
    assert data["customer"] == "Acme"
    expires_at = datetime.fromisoformat(data["expires_at"])
    assert before + timedelta(hours=2) <= expires_at <= datetime.now(UTC) + timedelta(hours=2)


def test_enrollment_code_plain_prints_only_the_code_on_stdout(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    main(["init", *args])
    capsys.readouterr()
    assert main(["enrollment-code", *args]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip()) == 14 and "\n" not in captured.out.strip()
    assert "valid until" in captured.err


def test_commands_before_init_say_what_to_do(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["enrollment-code", *args]) == 1
    assert "run `telemaint-server init`" in capsys.readouterr().err
    assert main(["run", *args, "--port", "1"]) == 1
    assert "no secret key; run `telemaint-server init`" in capsys.readouterr().err


def test_bad_ttl_and_bad_tls_flags_are_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["enrollment-code", "--ttl", "soon", *args]) == 1
    assert "--ttl" in capsys.readouterr().err
    assert main(["run", "--tls-cert", "/etc/hostname", *args]) == 1
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
    assert main(["enrollment-code", "--ttl", "999999999d", *args]) == 1
    assert "--ttl must be positive and at most 365 days" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["enrollment-code", "--device", "99999999999999999999"],
        ["device", "assign", "99999999999999999999", "--unassign"],
        ["user", "revoke-token", "root", "99999999999999999999"],
        ["user", "revoke-token", "root", "0"],
    ],
)
def test_absurd_ids_are_usage_errors(args: list[str], argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "is not an id (1 to 2147483647)" in err and "Traceback" not in err


def test_unreachable_database_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.server.conftest import free_port

    url = f"postgresql+psycopg://nobody:pw@127.0.0.1:{free_port()}/nothing"
    assert main(["init", "--db", url, "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("telemaint-server: database error:") and err.count("\n") == 1
    assert "pw" not in err


def test_placeholder_secret_is_refused(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TELEMAINT_SERVER_SECRET_KEY", "changeme")
    assert main(["init", *args]) == 1
    assert "TELEMAINT_SERVER_SECRET_KEY" in capsys.readouterr().err


# ---------------------------------------------------------------- user management


def _add_user(args: list[str], monkeypatch: pytest.MonkeyPatch, name: str, role: str = "support") -> None:
    _stdin(monkeypatch, "long enough password\n")
    assert main(["user", "add", name, "--role", role, *args]) == 0


def _give_token_and_session(db_url: str, name: str) -> None:
    from server.auth import USER_TOKEN_PREFIX, hash_token, new_token
    from server.clock import utc_now
    from server.models import ApiToken
    from server.users import start_session

    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as session:
        user = session.scalar(select(User).where(User.name == name))
        assert user is not None
        token_hash = hash_token(new_token(USER_TOKEN_PREFIX))
        session.add(ApiToken(user_id=user.id, name="ci", token_hash=token_hash, created_at=utc_now()))
        start_session(session, user, now=utc_now(), lifetime_s=3600, address="127.0.0.1", user_agent="test")
        session.commit()
    engine.dispose()


def _audit_of(db_url: str, action: str) -> list[AuditEvent]:
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as session:
        events = list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))
    engine.dispose()
    return events


def test_user_passwd_sets_the_password_and_ends_sessions_and_tokens(
    args: list[str], db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["init", *args])
    _add_user(args, monkeypatch, "anna")
    _give_token_and_session(db_url, "anna")
    capsys.readouterr()
    _stdin(monkeypatch, "an entirely new password\n")
    assert main(["user", "passwd", "anna", "--password-stdin", *args]) == 0
    assert capsys.readouterr().out == "password of anna set; ended 1 session(s) and revoked 1 API token(s)\n"
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as session:
        user = session.scalar(select(User).where(User.name == "anna"))
        assert user is not None and verify_password("an entirely new password", user.password_hash)
    engine.dispose()
    (event,) = _audit_of(db_url, "user.password")
    assert event.actor.startswith("cli:") and event.target == "user:anna"
    assert event.details == {"sessions_revoked": 1, "tokens_revoked": 1}
    _stdin(monkeypatch, "short\n")
    assert main(["user", "passwd", "anna", *args]) == 1
    assert "at least 8 characters" in capsys.readouterr().err


def test_user_disable_enable_and_list(
    args: list[str], db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["init", *args])
    _add_user(args, monkeypatch, "root", "admin")
    _add_user(args, monkeypatch, "anna")
    _give_token_and_session(db_url, "anna")
    capsys.readouterr()
    assert main(["user", "disable", "anna", *args]) == 0
    assert capsys.readouterr().out == "disabled anna; ended 1 session(s) and revoked 1 API token(s)\n"
    assert main(["user", "list", "--json", *args]) == 0
    users = {u["name"]: u for u in json.loads(capsys.readouterr().out)["users"]}
    assert users["anna"]["disabled_at"] is not None and users["anna"]["tokens"] == 0
    assert users["root"]["disabled_at"] is None and users["root"]["role"] == "admin"
    assert main(["user", "list", *args]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["ID", "NAME", "ROLE", "CUSTOMER", "STATE", "SESSIONS", "TOKENS"]
    assert table[1].split()[1:] == ["anna", "support", "disabled", "0", "0"]
    assert main(["user", "disable", "anna", *args]) == 1
    assert capsys.readouterr().err == "telemaint-server: user 'anna' is disabled already\n"
    assert main(["user", "enable", "anna", *args]) == 0
    assert capsys.readouterr().out == "enabled anna\n"
    assert [e.target for e in _audit_of(db_url, "user.enable")] == ["user:anna"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["disable", "root"], "'root' is the last enabled admin"),
        (["disable", "nobody"], "no user 'nobody'"),
        (["enable", "root"], "user 'root' is not disabled"),
        (["tokens", "nobody"], "no user 'nobody'"),
        (["revoke-token", "root", "999"], "no such token of 'root'"),
    ],
)
def test_user_changes_refused_with_one_line(
    args: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    main(["init", *args])
    _add_user(args, monkeypatch, "root", "admin")
    capsys.readouterr()
    assert main(["user", *argv, *args]) == 1
    err = capsys.readouterr().err
    assert err == f"telemaint-server: {message}\n"


def test_user_tokens_and_revoke_token(
    args: list[str], db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["init", *args])
    _add_user(args, monkeypatch, "anna")
    _add_user(args, monkeypatch, "bert")
    _give_token_and_session(db_url, "anna")
    capsys.readouterr()
    assert main(["user", "tokens", "anna", "--json", *args]) == 0
    (token,) = json.loads(capsys.readouterr().out)["tokens"]
    assert token["name"] == "ci" and token["last_used_at"] is None
    assert main(["user", "revoke-token", "bert", str(token["id"]), *args]) == 1
    assert "no such token of 'bert'" in capsys.readouterr().err
    assert main(["user", "revoke-token", "anna", str(token["id"]), *args]) == 0
    assert capsys.readouterr().out == f"revoked API token {token['id']} of anna\n"
    assert main(["user", "tokens", "anna", *args]) == 0
    assert capsys.readouterr().out.split() == ["ID", "NAME", "CREATED", "LAST", "USED"]
    (event,) = _audit_of(db_url, "api_token.revoke")
    assert event.actor.startswith("cli:") and event.details == {"user": "anna", "name": "ci"}


def test_run_refuses_a_trusted_proxy_that_is_no_address(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--trusted-proxy", "10.0.0.1", "--trusted-proxy", "proxy.local", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("telemaint-server: --trusted-proxy: 'proxy.local' is not an IP address or network")
    assert err.count("\n") == 1
