"""`egoqa dev serve`: a small OpenAI-compatible server (chat completions, `/v1/models`) on
127.0.0.1 over a local model with the transformers backend, with faults to inject.

It exists to try `backend = "openai"` without a GPU and to test it: a message's images become
one video at the rate `mm_processor_kwargs.fps` gives (as the in-process backend shows frames),
so with greedy decoding and PNG frames it answers what the in-process backend answers. Requests
are generated one at a time. Faults: a fixed latency, every Nth request answered 429 or 500, a
hang, a dropped connection, a reply that is not JSON, an empty answer, a context limit, a key
refused from some point on.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from egoqa.backends.base import Frames, Request
from egoqa.plan.config import GenerationConfig

log = logging.getLogger("egoqa.dev.server")


@dataclass
class Faults:
    """What to do wrong, and how often (every Nth request; 0: never)."""

    latency_s: float = 0.0
    error_every: int = 0
    error_status: int = 429
    retry_after_s: float | None = None
    hang_every: int = 0
    drop_every: int = 0
    garble_every: int = 0
    empty_every: int = 0
    max_model_len: int | None = None
    refuse_key_after: int | None = None  # answer 401 once this many requests were answered

    def hits(self, every: int, n: int) -> bool:
        return every > 0 and n % every == 0


class DevServer:
    """The server; `backend` is anything with the backend protocol's `generate`."""

    def __init__(
        self,
        backend: Any,
        served_name: str,
        faults: Faults | None = None,
        api_key_env: str | None = None,
        port: int = 0,
    ) -> None:
        self.backend, self.served_name = backend, served_name
        self.faults = faults or Faults()
        self.api_key_env = api_key_env
        self.count = 0  # chat requests received
        self.answered = 0  # chat requests answered with a completion
        self._lock = threading.Lock()
        self._generate_lock = threading.Lock()
        self._unhang = threading.Event()  # set when closing, or by `release_hangs`
        self.fingerprint = "egoqa-dev-" + hashlib.sha256(served_name.encode()).hexdigest()[:8]
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> DevServer:
        """Serve on a thread of this process (tests, benchmarks)."""
        # `close` waits until the loop looks for the shutdown: every 0.05 s, not the default 0.5.
        serve = functools.partial(self.httpd.serve_forever, poll_interval=0.05)
        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def release_hangs(self) -> None:
        """Hung requests end (their connections close without a reply)."""
        self._unhang.set()

    def close(self) -> None:
        self._unhang.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def next_number(self) -> int:
        with self._lock:
            self.count += 1
            return self.count

    def authorised(self, header: str | None) -> bool:
        limit = self.faults.refuse_key_after
        if limit is not None and self.answered >= limit:
            return False
        if self.api_key_env is None:
            return True
        key = os.environ.get(self.api_key_env, "")
        return bool(key) and header == f"Bearer {key}"

    def hang(self) -> None:
        self._unhang.wait()

    def complete(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(status, reply) for a chat-completions body."""
        if body.get("model") != self.served_name:
            msg = f"The model `{body.get('model')}` does not exist (serving {self.served_name})"
            return 404, _error(msg, "NotFoundError")
        request = request_from(body)
        with self._generate_lock:
            result = self.backend.generate([request])[0]
        limit = self.faults.max_model_len
        if limit is not None and result.prompt_tokens > limit:
            msg = (
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{result.prompt_tokens} tokens in the messages. Please reduce the length."
            )
            return 400, _error(msg, "BadRequestError")
        return 200, self._reply(result)

    def _reply(self, result) -> dict[str, Any]:
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length" if reason == "length" else "stop",
            }
            for i, (text, reason) in enumerate(
                zip(result.texts, result.finish_reasons, strict=True)
            )
        ]
        completion = sum(result.completion_tokens)
        with self._lock:
            self.answered += 1
        return {
            "id": f"chatcmpl-{os.urandom(6).hex()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.served_name,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": result.prompt_tokens + completion,
            },
        }


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": None}}


def request_from(body: dict[str, Any]) -> Request:
    """The backend request a chat body stands for: a user message's images are one video."""
    import numpy as np

    system, prompt, images = None, "", []
    for message in body.get("messages", []):
        content = message.get("content")
        if message.get("role") == "system":
            system = content if isinstance(content, str) else _text(content)
            continue
        if isinstance(content, str):
            prompt = content
            continue
        prompt = _text(content)
        images = [_image(p["image_url"]["url"]) for p in content if p.get("type") == "image_url"]
    frames = None
    if images:
        fps = float((body.get("mm_processor_kwargs") or {}).get("fps", 1.0))
        frames = Frames(np.stack(images), [i / fps for i in range(len(images))], fps)
    temperature = float(body.get("temperature", 1.0))
    generation = GenerationConfig(
        max_new_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 512),
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else 1.0,
        top_p=float(body.get("top_p", 1.0)),
        top_k=int(body.get("top_k", 0)),
    )
    return Request(
        job_id=0,
        prompt=prompt,
        frames=frames,
        samples=int(body.get("n", 1)),
        generation=generation,
        system=system,
        seed=int(body.get("seed", 0)),
    )


def _text(content: list[dict[str, Any]]) -> str:
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


def _image(url: str):
    import numpy as np
    from PIL import Image

    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _handler(server: DevServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def do_GET(self) -> None:
            if not server.authorised(self.headers.get("Authorization")):
                return self._send(401, _error("invalid API key", "AuthenticationError"))
            if self.path.rstrip("/") == "/v1/models":
                model = {"id": server.served_name, "object": "model", "owned_by": "egoqa"}
                return self._send(200, {"object": "list", "data": [model]})
            self._send(404, _error(f"no route {self.path}", "NotFoundError"))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(length)
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, _error(f"no route {self.path}", "NotFoundError"))
            if not server.authorised(self.headers.get("Authorization")):
                return self._send(401, _error("invalid API key", "AuthenticationError"))
            n, f = server.next_number(), server.faults
            if f.latency_s:
                time.sleep(f.latency_s)
            if f.hits(f.hang_every, n):
                server.hang()
                self.close_connection = True
                return None
            if f.hits(f.drop_every, n):
                self.close_connection = True
                self.connection.shutdown(2)  # no reply at all: a reset for the client
                return None
            if f.hits(f.error_every, n):
                headers = {} if f.retry_after_s is None else {"Retry-After": f"{f.retry_after_s:g}"}
                msg = "too many requests" if f.error_status == 429 else "internal error"
                return self._send(f.error_status, _error(msg, "ServerError"), headers)
            if f.hits(f.garble_every, n):
                return self._send_bytes(200, b'{"choices": [{"message": ', {})
            status, reply = server.complete(json.loads(raw))
            if status == 200 and f.hits(f.empty_every, n):
                for choice in reply["choices"]:
                    choice["message"]["content"] = ""
            self._send(status, reply)

        def _send(self, status: int, doc: dict, headers: dict[str, str] | None = None) -> None:
            self._send_bytes(status, json.dumps(doc).encode(), headers or {})

        def _send_bytes(self, status: int, data: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    return Handler
