"""ASGI middleware: request IDs, the request-body size limit, last-resort 500s,
and requests that carry both ``Content-Length`` and ``Transfer-Encoding``.

Such a request is answered 400 with ``Connection: close`` and the connection
is closed (RFC 9112 §6.1): a proxy that frames the body by ``Content-Length``
and this server, which frames it by ``Transfer-Encoding``, would disagree on
where the next request starts (request smuggling).

Pure ASGI (no ``BaseHTTPMiddleware``) so streaming responses and long polls
are not buffered.
"""

from __future__ import annotations

import json
import logging
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._problems import MEDIA_TYPE, problem_body

__all__ = ["ServiceMiddleware"]

log = logging.getLogger("svdserve.service")

_RID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class ServiceMiddleware:
    """Assigns ``X-Request-ID``, refuses bodies over ``max_body_bytes`` with 413
    and turns an unhandled exception into a 500 problem.

    Parameters
    ----------
    app : ASGI app
    max_body_bytes : int
    streamed : callable or None
        ``streamed(scope)`` true: the body is passed on unbuffered and
        unlimited (an upload's block; its route checks the size itself).
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, streamed=None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.streamed = streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming, length, chunked = _request_id_and_length(scope)
        rid = incoming if _RID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        scope["svdserve.request_id"] = rid
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        if chunked and length is not None:
            await self._ambiguous_framing(scope, send_with_id, rid)
            return
        # Buffer the body (our bodies are small JSON) so an oversized one is
        # refused before any route sees it, whatever the transfer encoding.
        streamed = self.streamed is not None and self.streamed(scope)
        if length is not None and length > self.max_body_bytes and not streamed:
            await self._too_large(scope, send_with_id, rid)
            return
        chunks, total, more = [], 0, not streamed
        disconnected = None
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = message
                break
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_body_bytes:
                await self._too_large(scope, send_with_id, rid)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed and not streamed:
                replayed = True
                if disconnected is not None:
                    return disconnected
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        try:
            await self.app(scope, replay, send_with_id)
        except Exception:
            log.exception("unhandled error on %s %s (request %s)", scope.get("method"),
                          scope.get("path"), rid)
            if started:
                raise
            body = problem_body(
                500, "The service failed unexpectedly; quote the request_id when reporting it.",
                instance=scope.get("path", ""), request_id=rid)
            await self._send_json(send_with_id, 500, body)

    async def _ambiguous_framing(self, scope: Scope, send: Send, rid: str) -> None:
        body = problem_body(
            400, "The request has both Content-Length and Transfer-Encoding; send one of "
                 "them (RFC 9112 §6.1). The connection is closed.",
            instance=scope.get("path", ""), request_id=rid)
        await self._send_json(send, 400, body, close=True)

    async def _too_large(self, scope: Scope, send: Send, rid: str) -> None:
        body = problem_body(413, f"The request body exceeds {self.max_body_bytes} bytes.",
                            instance=scope.get("path", ""), request_id=rid)
        await self._send_json(send, 413, body)

    @staticmethod
    async def _send_json(send: Send, status: int, body: dict, close: bool = False) -> None:
        data = json.dumps(body).encode()
        headers = [(b"content-type", MEDIA_TYPE.encode()),
                   (b"content-length", str(len(data)).encode())]
        if close:  # the server closes the connection after a response that says so
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


def _request_id_and_length(scope: Scope) -> tuple[str, int | None, bool]:
    """The ``X-Request-ID`` (``""`` if none), ``Content-Length`` (None if none or bad)
    and whether a ``Transfer-Encoding`` header came."""
    incoming, length, chunked = "", None, False
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            incoming = value.decode("latin-1")
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = -1  # present but bad: still a framing conflict with chunked
    return incoming, length, chunked
