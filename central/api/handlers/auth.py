"""Sign-in, sign-out, session, and the caller's permissions."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from central.api.middlewares import COOKIE
from central.api.registry import Router
from central.api.request import Req
from central.api.wire import ok
from central.schemas.auth import SignInBody, SignInOut
from central.schemas.base import dump
from central.services import auth

router = Router(tag="auth", entity_type="USER")


@router.post("/auth/sign-in/email", public=True, action="SIGN_IN", response_model=SignInOut)
async def sign_in(rq: Req, body: SignInBody) -> web.Response:
    """Sign in with email and password; sets the mes_session cookie."""
    st = rq.settings
    result = await rq.write(
        auth.sign_in,
        body.email,
        body.password.get_secret_value(),
        ttl_seconds=st.session_ttl_seconds,
        max_failures=st.sign_in_max_failures,
        window_seconds=st.sign_in_window_seconds,
    )
    resp = ok(dump(SignInOut.model_validate(result, from_attributes=True)))
    # First (and only) Set-Cookie: the session.
    resp.set_cookie(
        COOKIE,
        result.token,
        httponly=True,
        path="/",
        samesite="Lax",
        max_age=st.session_ttl_seconds,
        secure=st.secure_cookies,
    )
    return resp


@router.post("/auth/sign-out", action="SIGN_OUT")
async def sign_out(rq: Req) -> web.Response:
    """End the current session and clear the cookie."""
    await rq.write(auth.sign_out)
    resp = ok({"signedOut": True})
    resp.del_cookie(COOKIE, path="/")
    return resp


@router.get("/auth/get-session")
async def get_session(rq: Req) -> dict[str, Any] | None:
    """The current session and user."""
    return await rq.read(auth.get_session)


@router.get("/permissions/me")
async def permissions_me(rq: Req) -> dict[str, Any]:
    """The caller's roles, permissions and line/station bindings."""
    return await rq.read(auth.permissions_me)
