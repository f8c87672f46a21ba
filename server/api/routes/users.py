"""The logged-in user and their API tokens."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status
from sqlalchemy import select

from server.api.deps import ClientAddress, CurrentUser, NowDep, RowIdPath, SessionDep
from server.api.models import ApiTokenCreated, ApiTokenIn, ApiTokenListOut, ApiTokenPublic, UserPublic
from server.api.routes.login import user_public
from server.audit import record_audit
from server.auth import USER_TOKEN_PREFIX, hash_token, new_token
from server.models import ApiToken

router = APIRouter(prefix="/users/me", tags=["users"])


@router.get("")
def get_me(user: CurrentUser, session: SessionDep) -> UserPublic:
    """Return who the credentials belong to."""
    return user_public(session, user)


@router.post("/tokens", status_code=status.HTTP_201_CREATED)
def create_token(
    body: ApiTokenIn,
    user: CurrentUser,
    session: SessionDep,
    now: NowDep,
    address: ClientAddress,
) -> ApiTokenCreated:
    """Create an API token with the user's rights; the token is shown only in this answer."""
    token = new_token(USER_TOKEN_PREFIX)
    row = ApiToken(user_id=user.id, name=body.name, token_hash=hash_token(token), created_at=now)
    session.add(row)
    session.flush()
    record_audit(
        session,
        at=now,
        actor=f"user:{user.name}",
        action="api_token.create",
        target=f"api_token:{row.id}",
        details={"name": body.name},
        address=address,
    )
    session.commit()
    return ApiTokenCreated(id=row.id, name=row.name, created_at=row.created_at, last_used_at=None, token=token)


@router.get("/tokens")
def list_tokens(user: CurrentUser, session: SessionDep) -> ApiTokenListOut:
    """Return the user's API tokens (never the tokens themselves)."""
    rows = session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)).all()
    return ApiTokenListOut(tokens=[ApiTokenPublic.model_validate(r) for r in rows])


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(
    token_id: RowIdPath,
    user: CurrentUser,
    session: SessionDep,
    now: NowDep,
    address: ClientAddress,
) -> Response:
    """Revoke one of the user's API tokens."""
    row = session.get(ApiToken, token_id)
    if row is None or row.user_id != user.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such token")
    session.delete(row)
    record_audit(
        session,
        at=now,
        actor=f"user:{user.name}",
        action="api_token.revoke",
        target=f"api_token:{token_id}",
        address=address,
    )
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
