"""Accounts from the command line: `yushan tenant add`, `yushan user add|disable|enable`.

Each creation is checked (names, role against the tenant's kind, password length), audited
in the same transaction, and the new person can then log in through the API.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from yushan.accounts import AccountError, create_tenant, create_user
from yushan.cli import initialise, main
from yushan.config import set_config
from yushan.db import session_scope
from yushan.models import AuditEntry, Role, TenantKind, User

PASSWORD = "correct horse battery"


@pytest.fixture
def home(make_config):
    config = make_config()
    initialise(config)
    yield config
    set_config(config)


def cli(config, *args, stdin: str | None = None):
    result = CliRunner().invoke(main, ["--home", str(config.home), *args], input=stdin)
    return result


def test_an_operator_creates_a_merchant_and_its_first_user(home):
    assert cli(home, "tenant", "add", "tea_house", "--name", "Tea House", "--kind", "merchant").exit_code == 0
    result = cli(home, "user", "add", "tea_owner", "--role", "merchant", "--tenant", "tea_house",
                 "--password-stdin", stdin=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    with session_scope(home) as session:
        user = session.scalar(select(User).where(User.username == "tea_owner"))
        assert user.tenant.slug == "tea_house" and user.role == "merchant" and user.active
        assert PASSWORD not in user.password_hash
        actions = [e.action for e in session.scalars(select(AuditEntry).order_by(AuditEntry.seq))]
        assert actions[-2:] == ["admin.tenant_create", "admin.user_create"]
        assert all(PASSWORD not in (e.details or "") for e in session.scalars(select(AuditEntry)))


def test_the_new_user_can_log_in_and_a_disabled_one_cannot(home):
    from web import create_app

    cli(home, "tenant", "add", "lens_lab", "--name", "Lens Lab", "--kind", "provider")
    cli(home, "user", "add", "lens_dev", "--role", "provider", "--tenant", "lens_lab",
        "--password-stdin", stdin=PASSWORD + "\n")
    client = create_app(home).test_client()
    login = client.post("/api/v1/token", json={"username": "lens_dev", "password": PASSWORD})
    assert login.status_code == 200, login.get_json()
    token = login.get_json()["token"]
    assert client.get("/api/v1/datasets", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert cli(home, "user", "disable", "lens_dev").exit_code == 0
    assert client.get("/api/v1/datasets", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    again = client.post("/api/v1/token", json={"username": "lens_dev", "password": PASSWORD})
    assert again.status_code == 401
    assert cli(home, "user", "enable", "lens_dev").exit_code == 0
    assert client.post("/api/v1/token",
                       json={"username": "lens_dev", "password": PASSWORD}).status_code == 200


BAD = [
    # (what is wrong, the command's arguments, a phrase of the error)
    ("slug with a capital", ["tenant", "add", "Tea", "--name", "T", "--kind", "merchant"], "lowercase"),
    ("slug with a dot", ["tenant", "add", "tea.house", "--name", "T", "--kind", "merchant"], "lowercase"),
    ("a second platform", ["tenant", "add", "plat2", "--name", "P", "--kind", "platform"], "Invalid value"),
    ("short password", ["user", "add", "sam", "--role", "admin", "--password-stdin"], "at least 12"),
    ("merchant role on the platform", ["user", "add", "sam", "--role", "merchant", "--password-stdin"],
     "belongs to a merchant tenant"),
    ("unknown tenant", ["user", "add", "sam", "--role", "merchant", "--tenant", "nope", "--password-stdin"],
     "no tenant named nope"),
    ("bad user name", ["user", "add", "s m", "--role", "admin", "--password-stdin"], "user name"),
    ("disable a missing user", ["user", "disable", "ghost"], "no user named ghost"),
]


@pytest.mark.parametrize("what,args,phrase", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_say_what_is_wrong_and_change_nothing(home, what, args, phrase):
    stdin = ("short\n" if "short" in what else PASSWORD + "\n")
    with session_scope(home) as session:
        before = session.scalar(select(AuditEntry.seq).order_by(AuditEntry.seq.desc()).limit(1))
    result = cli(home, *args, stdin=stdin)
    assert result.exit_code != 0
    assert phrase in result.output
    with session_scope(home) as session:
        after = session.scalar(select(AuditEntry.seq).order_by(AuditEntry.seq.desc()).limit(1))
        assert after == before
        assert session.scalar(select(User).where(User.username.in_(["sam", "s m"]))) is None


def test_duplicates_are_refused(home):
    with session_scope(home) as session:
        create_tenant(session, "tea_house", "Tea House", TenantKind.MERCHANT)
        create_user(session, "tea_owner", PASSWORD, Role.MERCHANT, "tea_house")
    with session_scope(home) as session, pytest.raises(AccountError, match="exists already"):
        create_tenant(session, "tea_house", "Again", TenantKind.MERCHANT)
    with session_scope(home) as session, pytest.raises(AccountError, match="exists already"):
        create_user(session, "tea_owner", PASSWORD, Role.MERCHANT, "tea_house")


# ---------------------------------------------------------------- password hashing


def test_passwords_are_stored_with_argon2id_at_owasps_minimum(home):
    from argon2 import extract_parameters

    from yushan.accounts import needs_rehash, verify_password

    with session_scope(home) as session:
        create_tenant(session, "tea_house", "Tea House", TenantKind.MERCHANT)
        user = create_user(session, "tea_owner", PASSWORD, Role.MERCHANT, "tea_house")
        stored = user.password_hash
        assert PASSWORD not in stored
        params = extract_parameters(stored)  # OWASP: argon2id, m=19 MiB, t=2, p=1
        assert stored.startswith("$argon2id$")
        assert (params.memory_cost, params.time_cost, params.parallelism) == (19 * 1024, 2, 1)
        assert verify_password(user, PASSWORD, demo_mode=False)
        assert not verify_password(user, PASSWORD + "x", demo_mode=False)
        assert not needs_rehash(stored)
        # the same password twice: two salts
        other = create_user(session, "tea_clerk", PASSWORD, Role.MERCHANT, "tea_house")
        assert other.password_hash != stored


@pytest.mark.parametrize("older", [
    "scrypt",  # what the platform wrote before (werkzeug, N=2^15)
    "pbkdf2:sha256:600000",
    "argon2id-weaker",  # argon2id below today's parameters
])
def test_older_hashes_still_verify_and_are_upgraded_after_a_right_password(home, older):
    from argon2 import PasswordHasher
    from werkzeug.security import generate_password_hash

    from yushan.accounts import needs_rehash, upgrade_hash, verify_password

    stored = (PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
              if older == "argon2id-weaker" else generate_password_hash(PASSWORD, method=older))
    with session_scope(home) as session:
        create_tenant(session, "tea_house", "Tea House", TenantKind.MERCHANT)
        user = create_user(session, "tea_owner", "placeholder-password", Role.MERCHANT, "tea_house")
        user.password_hash = stored
        assert needs_rehash(stored)
        assert not verify_password(user, "wrong password!", demo_mode=False)
        assert verify_password(user, PASSWORD, demo_mode=False)
        assert upgrade_hash(user, PASSWORD)
        assert user.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        assert verify_password(user, PASSWORD, demo_mode=False)
        assert not upgrade_hash(user, PASSWORD)  # today's parameters: left alone
