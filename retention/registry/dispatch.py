"""One request through authentication, redirects and cookies to the transport.

This is the part of ``httpx.AsyncClient.send`` a registry client uses, and nothing else:
the ``httpx.Auth`` flow (``auth.py``) sees every response and may send the request again
or ask a token service first; a redirect is followed when asked (a blob on S3 storage),
with httpx's rules for the next request; a ``Set-Cookie`` is kept and sent back, as a
cookie-setting proxy in front of the registry expects. It speaks httpx's types, so the
auth flow, the transport and the errors stay httpx's.

Why not ``AsyncClient.send`` itself: on a cold scan the client's CPU per request is taken
from the registry's on the same cores, and ``send`` did more per request than a scan
needs: event hooks, a timer wrapping each response stream, a log call, the mounts lookup,
the cookie jar's urllib adapters for answers that set no cookie. Over the 2,000 GETs of a
cold scan of 1,000 tags (five rounds alternating, one registry), ``RegistryClient`` spent
0.454 ms of CPU per request through ``send`` and 0.355 ms through this module, and got
579 against 654 answers per second. (Proxies from the environment were never in play:
httpx ignores them once it is given a transport.)

Must not: retry, read bodies for the caller, or translate errors (``client.py`` does).
Every request must carry its timeouts in ``extensions`` (``send`` would add the client's;
``client.py`` and the token requests of ``auth.py`` set them), as the transport reads them
there.
"""

from __future__ import annotations

import httpx

# httpx's default: a loop of redirects ends as TooManyRedirects, a RequestError.
MAX_REDIRECTS = 20
_SEE_OTHER, _FOUND, _MOVED_PERMANENTLY = 303, 302, 301
_BODY_FIELDS = ("content-length", "transfer-encoding")


class Dispatcher:
    """Sends requests over ``transport`` with ``auth``; one per registry client."""

    def __init__(self, transport: httpx.AsyncBaseTransport, auth: httpx.Auth) -> None:
        self._transport = transport
        self._auth = auth
        self._cookies = httpx.Cookies()

    async def send(self, request: httpx.Request, *, follow_redirects: bool) -> httpx.Response:
        """The final response, unread: the caller reads and closes it.

        Responses the auth flow answered with another request are read to their end first,
        so that their connection goes back to the pool, as httpx does.
        """
        flow = self._auth.async_auth_flow(request)
        try:
            request = await flow.__anext__()
            while True:
                response = await self._follow(request, follow_redirects)
                try:
                    request = await flow.asend(response)
                except StopAsyncIteration:
                    return response
                except BaseException:
                    await response.aclose()
                    raise
                await _drain(response)
        finally:
            await flow.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def _follow(self, request: httpx.Request, follow_redirects: bool) -> httpx.Response:
        """One request, and its redirects when ``follow_redirects``: the last response."""
        for _ in range(MAX_REDIRECTS):
            response = await self._send_single(request)
            if not (follow_redirects and response.has_redirect_location):
                return response
            await _drain(response)
            request = self._redirected(request, response)
        raise httpx.TooManyRedirects("Exceeded maximum allowed redirects.", request=request)

    async def _send_single(self, request: httpx.Request) -> httpx.Response:
        if self._cookies:
            self._cookies.set_cookie_header(request)
        response = await self._transport.handle_async_request(request)
        response.request = request  # a MockTransport's handler may leave it unset
        if "set-cookie" in response.headers:
            self._cookies.extract_cookies(response)
        return response

    def _redirected(self, request: httpx.Request, response: httpx.Response) -> httpx.Request:
        """The request a redirect asks for, by httpx's rules (``_build_redirect_request``).

        The registry's Authorization never leaves its origin (httpx keeps it on an upgrade
        from http to https of the same host; we do not): a presigned storage URL carries
        its own, and a token sent there would be a token leaked.
        """
        method = _redirect_method(request.method, response.status_code)
        url = _redirect_url(request, response.headers["location"])
        headers = httpx.Headers(request.headers)
        for name in ("host", "cookie"):  # the new URL's Host, and the jar's cookies for it
            headers.pop(name, None)
        if (url.scheme, url.host, url.port) != (
            request.url.scheme,
            request.url.host,
            request.url.port,
        ):
            headers.pop("authorization", None)
        keep_body = method == request.method
        if not keep_body:
            for name in _BODY_FIELDS:
                headers.pop(name, None)
        return httpx.Request(
            method,
            url,
            headers=headers,
            stream=request.stream if keep_body else None,
            extensions=request.extensions,
        )


def _redirect_method(method: str, status: int) -> str:
    """httpx's (and browsers') choice: 303 and 302 become GET, and 301 after a POST."""
    if method == "HEAD":
        return method
    if status in (_SEE_OTHER, _FOUND) or (status == _MOVED_PERMANENTLY and method == "POST"):
        return "GET"
    return method


def _redirect_url(request: httpx.Request, location: str) -> httpx.URL:
    """``Location`` resolved against the request's URL (relative ones are allowed)."""
    try:
        return request.url.join(location)
    except httpx.InvalidURL as exc:
        raise httpx.RemoteProtocolError(
            f"Invalid URL in location header: {exc}.", request=request
        ) from None


async def _drain(response: httpx.Response) -> None:
    try:
        await response.aread()
    finally:
        await response.aclose()
