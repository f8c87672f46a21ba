"""Users, their sessions and API tokens: one set of rules for the CLI, the API and the dashboard.

A session is a row of ``user_sessions``; the cookie carries a random token whose sha256 is the
row's key, so logging out (deleting the row) kills every copy of the cookie. Changing a user's
password or disabling the user deletes all the user's sessions and API tokens at once. Every
change here is audited; the caller commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from server.audit import ADDRESS_MAX_CHARS, record_audit
from server.auth import SESSION_TOKEN_PREFIX, hash_password, hash_token, new_token, password_problem
from server.models import NAME_MAX_CHARS, ApiToken, Customer, User, UserSession

SESSION_TOUCH_INTERVAL_S = 60


class UserNotFound(LookupError):
    """No user (or no token or session of the user) by that name or id."""


class UserChangeRefused(ValueError):
    """A change the rules forbid, e.g. disabling the last enabled admin; the message says why."""


@dataclass(frozen=True)
class UserSummary:
    """A user as listed for admins: who, whose, since when, how many live credentials."""

    user: User
    customer: str | None
    sessions: int
    tokens: int


@dataclass(frozen=True)
class Revoked:
    """How many sessions and API tokens a change deleted."""

    sessions: int
    tokens: int


def _printable(text: str | None, max_chars: int) -> str | None:
    if not text:
        return None
    return "".join(ch for ch in text if ch.isprintable())[:max_chars] or None


# ---------------------------------------------------------------- looking users up


def find_user(session: Session, name: str) -> User:
    """Return the user called ``name``; raise UserNotFound."""
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise UserNotFound(f"no user {name!r}")
    return user


def get_user(session: Session, user_id: int) -> User:
    """Return the user with id ``user_id``; raise UserNotFound."""
    user = session.get(User, user_id)
    if user is None:
        raise UserNotFound("no such user")
    return user


def summarize_users(session: Session, users: list[User], now: datetime) -> list[UserSummary]:
    """Return ``users`` with their customer's name and counts of live sessions and tokens."""
    ids = [u.id for u in users]
    if not ids:
        return []
    sessions = dict(
        session.execute(
            select(UserSession.user_id, func.count())
            .where(UserSession.user_id.in_(ids), UserSession.expires_at > now)
            .group_by(UserSession.user_id)
        ).all()
    )
    tokens = dict(
        session.execute(
            select(ApiToken.user_id, func.count()).where(ApiToken.user_id.in_(ids)).group_by(ApiToken.user_id)
        ).all()
    )
    customer_ids = {u.customer_id for u in users if u.customer_id}
    customers = (
        dict(session.execute(select(Customer.id, Customer.name).where(Customer.id.in_(customer_ids))).all())
        if customer_ids
        else {}
    )
    return [
        UserSummary(
            user=u,
            customer=customers.get(u.customer_id) if u.customer_id else None,
            sessions=sessions.get(u.id, 0),
            tokens=tokens.get(u.id, 0),
        )
        for u in users
    ]


def list_users(session: Session, now: datetime) -> list[UserSummary]:
    """Return every user, by name, with counts of live sessions and API tokens."""
    return summarize_users(session, list(session.scalars(select(User).order_by(User.name))), now)


def user_tokens(session: Session, user: User) -> list[ApiToken]:
    """Return the user's API tokens, oldest first."""
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)))


# ---------------------------------------------------------------- sessions


def start_session(
    session: Session,
    user: User,
    *,
    now: datetime,
    lifetime_s: float,
    address: str | None,
    user_agent: str | None,
) -> tuple[str, UserSession]:
    """Add a session for ``user`` valid ``lifetime_s``; return (cookie token, row).

    The user's expired sessions are deleted on the way.
    """
    session.execute(delete(UserSession).where(UserSession.user_id == user.id, UserSession.expires_at <= now))
    token = new_token(SESSION_TOKEN_PREFIX)
    row = UserSession(
        user_id=user.id,
        token_hash=hash_token(token),
        created_at=now,
        expires_at=now + timedelta(seconds=lifetime_s),
        last_seen_at=now,
        address=_printable(address, ADDRESS_MAX_CHARS),
        user_agent=_printable(user_agent, NAME_MAX_CHARS),
    )
    session.add(row)
    session.flush()
    return token, row


def session_of_token(session: Session, token: str, now: datetime) -> tuple[UserSession, User] | None:
    """Return the live session of a cookie token and its enabled user, else None.

    ``last_seen_at`` is brought up to date at most once a :data:`SESSION_TOUCH_INTERVAL_S`
    (committed here).
    """
    if not token.startswith(SESSION_TOKEN_PREFIX):
        return None
    found = session.execute(
        select(UserSession, User)
        .join(User, User.id == UserSession.user_id)
        .where(UserSession.token_hash == hash_token(token))
    ).first()
    if found is None:
        return None
    row, user = found
    if row.expires_at <= now or user.disabled_at is not None:
        return None
    if now - row.last_seen_at > timedelta(seconds=SESSION_TOUCH_INTERVAL_S):
        row.last_seen_at = now
        session.commit()
    return row, user


def list_sessions(session: Session, user: User, now: datetime) -> list[UserSession]:
    """Return the user's live sessions, newest first."""
    return list(
        session.scalars(
            select(UserSession)
            .where(UserSession.user_id == user.id, UserSession.expires_at > now)
            .order_by(UserSession.created_at.desc(), UserSession.id.desc())
        )
    )


def end_session(
    session: Session,
    user: User,
    session_id: int,
    *,
    now: datetime,
    actor: str,
    address: str | None,
    action: str = "session.end",
) -> None:
    """Delete one of ``user``'s sessions and audit it; raise UserNotFound when it is not theirs."""
    row = session.get(UserSession, session_id)
    if row is None or row.user_id != user.id:
        raise UserNotFound("no such session")
    session.delete(row)
    record_audit(
        session,
        at=now,
        actor=actor,
        action=action,
        target=f"user:{user.name}",
        details={"session": session_id},
        address=address,
    )


def _revoke_credentials_audited(
    session: Session, user: User, action: str, *, now: datetime, actor: str, address: str | None
) -> Revoked:
    """Delete all of ``user``'s sessions and API tokens, audit ``action`` saying how many of
    each; return them."""
    sessions = session.execute(delete(UserSession).where(UserSession.user_id == user.id)).rowcount
    tokens = session.execute(delete(ApiToken).where(ApiToken.user_id == user.id)).rowcount
    revoked = Revoked(sessions=sessions or 0, tokens=tokens or 0)
    record_audit(
        session,
        at=now,
        actor=actor,
        action=action,
        target=f"user:{user.name}",
        details={"sessions_revoked": revoked.sessions, "tokens_revoked": revoked.tokens},
        address=address,
    )
    return revoked


# ---------------------------------------------------------------- changes


def set_password(
    session: Session,
    user: User,
    password: str,
    *,
    now: datetime,
    actor: str,
    address: str | None = None,
) -> Revoked:
    """Give ``user`` a new password, revoke their sessions and API tokens, audit; return what was revoked.

    Raises UserChangeRefused when the password is too short or too long.
    """
    problem = password_problem(password)
    if problem:
        raise UserChangeRefused(problem)
    user.password_hash = hash_password(password)
    return _revoke_credentials_audited(session, user, "user.password", now=now, actor=actor, address=address)


def disable_user(
    session: Session,
    user: User,
    *,
    now: datetime,
    actor: str,
    by: User | None = None,
    address: str | None = None,
) -> Revoked:
    """Disable ``user`` (no login, no token works), revoke their credentials, audit; return what was revoked.

    ``by`` is the admin doing it, None from the CLI. Raises UserChangeRefused when ``by`` is the
    user, when the user is disabled already, or when the user is the last enabled admin.
    """
    if by is not None and by.id == user.id:
        raise UserChangeRefused("you cannot disable yourself")
    if user.disabled_at is not None:
        raise UserChangeRefused(f"user {user.name!r} is disabled already")
    if user.role == "admin":
        # Two admins disabling each other at once must not leave none: lock the admins' rows
        # (PostgreSQL), write (which takes SQLite's write lock), and only then count.
        session.execute(select(User.id).where(User.role == "admin").order_by(User.id).with_for_update())
        user.disabled_at = now
        session.flush()
        admins = session.scalar(
            select(func.count()).select_from(User).where(User.role == "admin", User.disabled_at.is_(None))
        )
        if not admins:
            session.rollback()
            raise UserChangeRefused(f"{user.name!r} is the last enabled admin")
    user.disabled_at = now
    return _revoke_credentials_audited(session, user, "user.disable", now=now, actor=actor, address=address)


def enable_user(session: Session, user: User, *, now: datetime, actor: str, address: str | None = None) -> None:
    """Enable a disabled ``user`` again (with a password, but no sessions or tokens) and audit it.

    Raises UserChangeRefused when the user is not disabled.
    """
    if user.disabled_at is None:
        raise UserChangeRefused(f"user {user.name!r} is not disabled")
    user.disabled_at = None
    record_audit(session, at=now, actor=actor, action="user.enable", target=f"user:{user.name}", address=address)


def revoke_token(
    session: Session,
    user: User,
    token_id: int,
    *,
    now: datetime,
    actor: str,
    address: str | None = None,
) -> None:
    """Delete one of ``user``'s API tokens and audit it; raise UserNotFound when it is not theirs."""
    row = session.get(ApiToken, token_id)
    if row is None or row.user_id != user.id:
        raise UserNotFound("no such token")
    session.delete(row)
    record_audit(
        session,
        at=now,
        actor=actor,
        action="api_token.revoke",
        target=f"api_token:{token_id}",
        details={"user": user.name, "name": row.name},
        address=address,
    )
