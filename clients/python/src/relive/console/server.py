"""The console's HTTP server: static files, a JSON API over the gRPC services, and
Server-Sent Events for live mode and replay. Standard library only.

    httpd, port = serve(load_endpoints(), port=0)
    ...
    httpd.stop()
"""

from __future__ import annotations

import contextlib
import json
import logging
import mimetypes
import queue
import re
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import grpc

from relive.client.channel import Endpoints
from relive.console.backend import Backend, event_brief, ts_ms
from relive.errors import InvalidArgument, ReliveError, from_rpc_error

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 1024 * 1024
KEEPALIVE_S = 1.0
# Replay and live messages are sent in batches of at most this many events.
SSE_BATCH = 500

HTTP_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: HTTPStatus.CONFLICT,
    grpc.StatusCode.ABORTED: HTTPStatus.CONFLICT,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.PRECONDITION_FAILED,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    grpc.StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
}

CAPTURE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class ClientGone(Exception):
    """The browser closed the connection."""


class ConsoleServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], backend: Backend) -> None:
        super().__init__(address, Handler)
        self.backend = backend
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, name="relive-console", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.backend.close()


def serve(
    endpoints: Endpoints | Mapping[str, str], port: int = 0, host: str = "127.0.0.1"
) -> tuple[ConsoleServer, int]:
    """Starts the console in a background thread; ``httpd.stop()`` ends it."""
    httpd = ConsoleServer((host, port), Backend(endpoints))
    httpd.start()
    return httpd, httpd.port


def _int(q: Mapping[str, list[str]], key: str, default: int | None = None) -> int | None:
    values = q.get(key)
    if not values or values[0] == "":
        return default
    try:
        return int(float(values[0]))
    except ValueError as e:
        raise InvalidArgument(f"{key} must be a number", field=key) from e


def _str(q: Mapping[str, list[str]], key: str, default: str = "") -> str:
    values = q.get(key)
    return values[0] if values else default


def _list(q: Mapping[str, list[str]], key: str) -> list[str]:
    return [v for raw in q.get(key, []) for v in raw.split(",") if v]


Route = Callable[["Handler", dict[str, list[str]], list[str]], None]


class Handler(BaseHTTPRequestHandler):
    server: ConsoleServer
    server_version = "relive-console"
    # HTTP/1.0: every response ends with the connection, which suits streamed downloads and SSE.
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    @property
    def backend(self) -> Backend:
        return self.server.backend

    # -- dispatch

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        parts = [p for p in url.path.split("/") if p]
        try:
            if not parts or parts[0] != "api":
                if method != "GET":
                    raise InvalidArgument("only GET serves files", field="method")
                self._static(url.path)
                return
            route = ROUTES.get(
                (method, "/".join(p if i != 2 else "*" for i, p in enumerate(parts)))
            )
            if route is None:
                self._json(
                    {"error": {"code": "NOT_FOUND", "message": f"no API {url.path}"}},
                    HTTPStatus.NOT_FOUND,
                )
                return
            route(self, q, parts)
        except ClientGone:
            pass
        except grpc.RpcError as e:
            self._error(from_rpc_error(e))
        except ReliveError as e:
            self._error(e)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception("console request %s %s failed", method, self.path)
            self._json(
                {"error": {"code": "INTERNAL", "message": "internal error"}},
                HTTPStatus.INTERNAL_SERVER_ERROR,
            )

    def _error(self, e: ReliveError) -> None:
        status = HTTP_BY_CODE.get(e.code, HTTPStatus.BAD_GATEWAY)
        body = {"error": {"code": e.code.name, "message": e.message, "field": e.field}}
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._json(body, status)

    # -- responses

    def _json(self, value: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        data = json.dumps(value, separators=(",", ":"), default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise InvalidArgument("request body too large", field="body")
        raw = self.rfile.read(length) if length else b"{}"
        try:
            value = json.loads(raw or b"{}")
        except ValueError as e:
            raise InvalidArgument(f"body is not JSON: {e}", field="body") from e
        if not isinstance(value, dict):
            raise InvalidArgument("body must be a JSON object", field="body")
        return value

    def _static(self, path: str) -> None:
        rel = path.lstrip("/") or "index.html"
        if rel.startswith("static/"):
            rel = rel[len("static/") :]
        target = (STATIC / rel).resolve()
        if STATIC not in target.parents or not target.is_file():
            # Unknown paths get the page, so /ions/churn can be bookmarked.
            target = STATIC / "index.html"
        data = target.read_bytes()
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.write(data)

    def _sse_start(self) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()

    def _sse(self, event: str, data: Any) -> None:
        payload = json.dumps(data, separators=(",", ":"), default=str)
        try:
            self.wfile.write(f"event: {event}\ndata: {payload}\n\n".encode())
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError) as e:
            raise ClientGone from e

    def _keepalive(self) -> None:
        try:
            self.wfile.write(b": keepalive\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError) as e:
            raise ClientGone from e

    # -- API

    def api_health(self, q: dict[str, list[str]], parts: list[str]) -> None:
        e = self.backend.endpoints
        self._json(
            {
                "ok": True,
                "endpoints": {
                    "registry": e.registry,
                    "recorder": e.recorder,
                    "executor": e.executor,
                },
            }
        )

    def api_ions(self, q: dict[str, list[str]], parts: list[str]) -> None:
        self._json({"ions": self.backend.list_ions()})

    def api_ion(self, q: dict[str, list[str]], parts: list[str]) -> None:
        self._json(self.backend.get_ion(parts[2]))

    def api_histogram(self, q: dict[str, list[str]], parts: list[str]) -> None:
        buckets = _int(q, "buckets", 200) or 200
        self._json(self.backend.histogram(parts[2], _int(q, "start"), _int(q, "end"), buckets))

    def api_events(self, q: dict[str, list[str]], parts: list[str]) -> None:
        start, end = _int(q, "start"), _int(q, "end")
        if start is None or end is None:
            raise InvalidArgument("start and end are required", field="start")
        self._json(
            self.backend.list_events(
                parts[2],
                start,
                end,
                kinds=_list(q, "kinds"),
                nodes=_list(q, "nodes"),
                limit=_int(q, "limit", 2000) or 2000,
            )
        )

    def api_event(self, q: dict[str, list[str]], parts: list[str]) -> None:
        sequence, ms = _int(q, "sequence"), _int(q, "ms")
        if sequence is None or ms is None:
            raise InvalidArgument("sequence and ms are required", field="sequence")
        self._json(self.backend.event_details(parts[2], sequence, ms))

    def api_ion_run(self, q: dict[str, list[str]], parts: list[str]) -> None:
        """A run's launch spec and state: the executor's, or the recorded run.launched."""
        self._json(self.backend.run_spec(parts[2], _str(q, "name")))

    def api_trace(self, q: dict[str, list[str]], parts: list[str]) -> None:
        self._json(self.backend.trace(parts[2], _str(q, "trace_id")))

    def api_live(self, q: dict[str, list[str]], parts: list[str]) -> None:
        """New events of an ION as they are recorded."""
        index = self.backend.index(parts[2], wait_s=60.0)
        sub = index.subscribe()
        try:
            self._sse_start()
            self._sse(
                "hello",
                {"ion": index.ion, "last_sequence": index.last_sequence, "indexed": len(index.ms)},
            )
            while True:
                try:
                    batch = sub.get(timeout=KEEPALIVE_S)
                except queue.Empty:
                    self._keepalive()
                    continue
                if batch is None:
                    self._sse("reset", {})
                    return
                while len(batch) < SSE_BATCH:
                    try:
                        more = sub.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        break
                    batch.extend(more)
                self._sse("events", {"events": batch})
        finally:
            index.unsubscribe(sub)

    def api_captures(self, q: dict[str, list[str]], parts: list[str]) -> None:
        self._json({"captures": self.backend.list_captures(_str(q, "ion"))})

    def api_create_capture(self, q: dict[str, list[str]], parts: list[str]) -> None:
        body = self._body()
        cid = str(body.get("id") or "").strip()
        if not CAPTURE_ID.match(cid):
            raise InvalidArgument(
                "a capture id is 1-63 lowercase letters, digits and dashes", field="id"
            )
        try:
            start, end = int(body["start"]), int(body["end"])
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidArgument("start and end (ms) are required", field="start") from e
        self._json(
            self.backend.create_capture(
                str(body.get("ion") or ""), cid, start, end, str(body.get("description") or "")
            ),
            HTTPStatus.CREATED,
        )

    def api_delete_capture(self, q: dict[str, list[str]], parts: list[str]) -> None:
        self.backend.delete_capture(_str(q, "name"))
        self._json({"deleted": _str(q, "name")})

    def api_replay(self, q: dict[str, list[str]], parts: list[str]) -> None:
        """A capture's events on the recorder's playback clock; closing the stream pauses."""
        name = _str(q, "capture")
        speed = float(_str(q, "speed", "1") or 1)
        capture = self.backend.get_capture(name)
        start = _int(q, "start")
        stream = self.backend.replay(name, speed, start)
        items: queue.Queue[tuple[str, Any]] = queue.Queue(SSE_BATCH * 4)
        gone = threading.Event()

        def put(item: tuple[str, Any]) -> bool:
            # Bounded: a slow browser slows the replay; a closed one ends it.
            while not gone.is_set():
                try:
                    items.put(item, timeout=0.5)
                    return True
                except queue.Full:
                    continue
            return False

        def pump() -> None:
            try:
                for response in stream:
                    brief = event_brief(response.event)
                    brief["playback_ms"] = ts_ms(response.playback_time)
                    if not put(("event", brief)):
                        return
                put(("end", None))
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.CANCELLED:
                    err = from_rpc_error(e)
                    put(("error", {"code": err.code.name, "message": err.message}))

        threading.Thread(target=pump, name="console-replay", daemon=True).start()
        try:
            self._sse_start()
            self._sse("capture", {**capture, "speed": speed, "seek": start or capture["start"]})
            while True:
                try:
                    kind, value = items.get(timeout=KEEPALIVE_S)
                except queue.Empty:
                    self._keepalive()
                    continue
                if kind != "event":
                    self._sse(kind, value or {})
                    return
                batch = [value]
                while len(batch) < SSE_BATCH:
                    try:
                        kind, value = items.get_nowait()
                    except queue.Empty:
                        break
                    if kind != "event":
                        self._sse("events", {"events": batch})
                        self._sse(kind, value or {})
                        return
                    batch.append(value)
                self._sse("events", {"events": batch})
        finally:
            gone.set()
            stream.cancel()

    def api_export(self, q: dict[str, list[str]], parts: list[str]) -> None:
        """The capture's .tar.gz, streamed through to the browser as a download."""
        name = _str(q, "capture")
        stream = self.backend.export(name, _str(q, "models") in ("1", "true"))
        try:
            # The first message is read before any header, so a bad capture is a JSON error.
            first = next(stream, None)
            if _str(q, "probe") == "1":
                self._json({"ok": True, "capture": name})
                return
            filename = name.rsplit("/", 1)[-1] + ".tar.gz"
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/gzip")
            self.send_header(
                "Content-Disposition",
                f"attachment; filename=\"{filename}\"; filename*=UTF-8''{quote(filename)}",
            )
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            for response in [first] if first is not None else []:
                if response.WhichOneof("payload") == "chunk":
                    self.wfile.write(response.chunk)
            for response in stream:
                if response.WhichOneof("payload") == "chunk":
                    self.wfile.write(response.chunk)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ClientGone from e
        finally:
            stream.cancel()

    def api_relaunch(self, q: dict[str, list[str]], parts: list[str]) -> None:
        body = self._body()
        capture = str(body.get("capture") or "")
        if not capture:
            raise InvalidArgument("capture is required", field="capture")
        pipelines = [str(p) for p in body.get("pipelines") or []]
        self._json(self.backend.relaunch(capture, pipelines), HTTPStatus.CREATED)

    def api_run(self, q: dict[str, list[str]], parts: list[str]) -> None:
        self._json(self.backend.get_run(_str(q, "name")))

    def api_verify(self, q: dict[str, list[str]], parts: list[str]) -> None:
        body = self._body()
        self._json(
            self.backend.verify(
                str(body.get("original") or ""),
                str(body.get("relaunch") or ""),
                float(body.get("tolerance") or 0.0),
            )
        )


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "api/health"): Handler.api_health,
    ("GET", "api/ions"): Handler.api_ions,
    ("GET", "api/ions/*"): Handler.api_ion,
    ("GET", "api/ions/*/histogram"): Handler.api_histogram,
    ("GET", "api/ions/*/events"): Handler.api_events,
    ("GET", "api/ions/*/event"): Handler.api_event,
    ("GET", "api/ions/*/trace"): Handler.api_trace,
    ("GET", "api/ions/*/run"): Handler.api_ion_run,
    ("GET", "api/ions/*/live"): Handler.api_live,
    ("GET", "api/captures"): Handler.api_captures,
    ("POST", "api/captures"): Handler.api_create_capture,
    ("DELETE", "api/captures"): Handler.api_delete_capture,
    ("GET", "api/replay"): Handler.api_replay,
    ("GET", "api/export"): Handler.api_export,
    ("POST", "api/relaunch"): Handler.api_relaunch,
    ("GET", "api/run"): Handler.api_run,
    ("POST", "api/verify"): Handler.api_verify,
}

__all__ = ["ConsoleServer", "serve"]
