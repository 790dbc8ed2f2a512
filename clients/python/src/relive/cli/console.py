"""`relive console`: the timeline console in the browser."""

from __future__ import annotations

import argparse
import threading
import webbrowser
from typing import Any

from relive.cli.output import add_json_flag, emit_json


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "console", help="serve the timeline console (browse, capture, replay, relaunch) on HTTP"
    )
    p.add_argument("--port", type=int, default=8470, help="HTTP port (default 8470; 0 picks one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--open", action="store_true", help="open the page in a web browser")
    add_json_flag(p)
    p.set_defaults(func=cmd_console)


def cmd_console(args: argparse.Namespace) -> int:
    from relive.client.channel import load_endpoints
    from relive.console.server import serve

    endpoints = load_endpoints()
    httpd, port = serve(endpoints, port=args.port, host=args.host)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    url = f"http://{host}:{port}/"
    if args.json:
        emit_json({"url": url, "port": port, "endpoints": endpoints.to_json()})
    else:
        print(f"relive console on {url}  (Ctrl-C stops it)", flush=True)
    if args.open:
        webbrowser.open(url)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.stop()
    return 0
