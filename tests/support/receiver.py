"""A local HTTP endpoint that records the form POSTs it receives: a tenant's delivery callback
URL, as the worker sees it. Paths can be told to fail, to hang, or to redirect."""

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.servers import free_port


@dataclass(frozen=True)
class Post:
    url: str
    headers: dict[str, str]
    items: list[tuple[str, str]]
    status: int

    @property
    def form(self) -> ImmutableMultiDict:
        return ImmutableMultiDict(self.items)

    def one(self, name: str) -> str:
        [value] = self.form.getlist(name)
        return value

    @property
    def states(self) -> list[dict]:
        return [json.loads(value) for value in self.form.getlist("DeliveryState")]


@dataclass
class Receiver:
    """Records every form POST by path; answers 500 to the post numbers listed in `failing`,
    never answers on `hanging` paths (counting how many wait at once), and redirects on
    `redirects` paths."""

    base_url: str = ""
    posts: dict[str, list[Post]] = field(default_factory=dict)
    failing: dict[str, set[int]] = field(default_factory=dict)
    hanging: set[str] = field(default_factory=set)
    redirects: dict[str, str] = field(default_factory=dict)
    waiting: int = 0
    most_waiting: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        if path in self.hanging:
            with self.lock:
                self.waiting += 1
                self.most_waiting = max(self.most_waiting, self.waiting)
            try:
                await asyncio.sleep(3600)
            finally:
                with self.lock:
                    self.waiting -= 1
        form = await request.form()
        items = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        with self.lock:
            received = self.posts.setdefault(path, [])
            status = 500 if len(received) + 1 in self.failing.get(path, set()) else 200
            if path in self.redirects:
                status = 307
            received.append(Post(str(request.url), dict(request.headers), items, status))
        headers = {"location": self.redirects[path]} if path in self.redirects else None
        return Response(status_code=status, headers=headers)

    def new_url(
        self,
        *,
        fail: set[int] = frozenset(),  # type: ignore[assignment]
        hang: bool = False,
        redirect_to: str | None = None,
    ) -> str:
        path = f"/callbacks/{uuid.uuid4().hex}"
        self.failing[path] = set(fail)
        if hang:
            self.hanging.add(path)
        if redirect_to is not None:
            self.redirects[path] = redirect_to
        return f"{self.base_url}{path}?token=abc&x=%2Fy"

    def received(self, url: str) -> list[Post]:
        path = "/" + url.split("/", 3)[3].split("?")[0]
        with self.lock:
            return list(self.posts.get(path, []))


@contextmanager
def serve_receiver(host: str = "127.0.0.1") -> Iterator[Receiver]:
    recorder = Receiver()
    app = Starlette(routes=[Route("/callbacks/{rest:path}", recorder.handle, methods=["POST"])])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "receiver did not start"
        time.sleep(0.01)
    recorder.base_url = f"http://{host}:{port}"
    try:
        yield recorder
    finally:
        server.should_exit = True
        thread.join(timeout=10)
