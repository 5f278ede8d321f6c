"""An engine behind an OpenAI-compatible server (vLLM, SGLang, `egoqa dev serve`, hosted APIs).

Each request becomes one `POST {base_url}/chat/completions`: the prompt text the transformers
backend builds, the frames as `image_url` data URLs at the sampler's size, frames before the
question (so the requests of one clip share a prefix a server can cache), `n` samples and a seed
derived from the job's seed and the first sample's index. Up to `concurrency` requests are in
flight, each on a thread of its own; `submit` hands one over and `next_outcome` returns whichever
finishes first. Faults are sorted by `decide` (a pure function): 429, 5xx, resets and timeouts
retry with exponential backoff and jitter (at least `Retry-After`), then fail the job as
`upstream_unavailable`; 401/403 stop the worker. No torch here: frames are encoded with Pillow.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import logging
import os
import queue
import random
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from egoqa.backends.base import Request, Result, sample_seed
from egoqa.errors import ConfigError, UpstreamAuthError, UpstreamError
from egoqa.plan.config import OpenAIConfig

log = logging.getLogger("egoqa.work.worker")

JPEG_QUALITY = 95
_CONTEXT_MARKERS = ("context length", "context_length", "maximum context", "too many tokens")
_RETRY_STATUS = {408, 409, 425, 429}
_NETWORK_ERRORS = (OSError, http.client.HTTPException)  # resets, refusals, timeouts, cut replies


# --- requests ----------------------------------------------------------------------------------


def frame_url(frame: Any, image_format: str) -> str:
    """One frame (H, W, 3 uint8) as a data URL: JPEG (quality 95) or lossless PNG."""
    from PIL import Image

    buf = io.BytesIO()
    image = Image.fromarray(frame)
    if image_format == "png":
        image.save(buf, format="PNG", compress_level=1)
    else:
        image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return f"data:image/{image_format};base64,{base64.b64encode(buf.getvalue()).decode()}"


class FrameURLs:
    """Data URLs of the frame sets seen last: a clip's queries share one set of frames, which
    is then encoded once (safe from every request thread)."""

    def __init__(self, items: int = 16) -> None:
        self.items = items
        self._cache: OrderedDict[int, tuple[Any, list[str]]] = OrderedDict()
        self._lock = threading.Lock()

    def urls(self, frames: Any, image_format: str) -> list[str]:
        key = id(frames.array)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] is frames.array:
                self._cache.move_to_end(key)
                return hit[1]
        urls = [frame_url(f, image_format) for f in frames.array]
        with self._lock:
            self._cache[key] = (frames.array, urls)  # the array is kept: its id stays its own
            while len(self._cache) > self.items:
                self._cache.popitem(last=False)
        return urls


def chat_body(
    request: Request,
    model: str,
    config: OpenAIConfig,
    n: int,
    first_sample: int = 0,
    cache: FrameURLs | None = None,
) -> dict[str, Any]:
    """The chat-completions body for `n` samples of a request, starting at `first_sample`."""
    content: list[dict[str, Any]] = []
    frames = request.frames
    if frames is not None:  # frames first: requests of one clip share this prefix
        fmt = config.image_format
        if cache is not None:
            urls = cache.urls(frames, fmt)
        else:
            urls = [frame_url(f, fmt) for f in frames.array]
        content += [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    content.append({"type": "text", "text": request.prompt})
    messages: list[dict[str, Any]] = []
    if request.system is not None:
        messages.append({"role": "system", "content": request.system})
    messages.append({"role": "user", "content": content})
    gen = request.generation
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": gen.max_new_tokens,
        "n": n,
        "seed": sample_seed(request.seed, first_sample),
    }
    if gen.do_sample:
        body |= {"temperature": gen.temperature, "top_p": gen.top_p}
        if config.vllm_extensions and gen.top_k > 0:
            body["top_k"] = gen.top_k
    else:
        body["temperature"] = 0.0
    if config.vllm_extensions and frames is not None and frames.fps > 0:
        body["mm_processor_kwargs"] = {"fps": float(frames.fps)}
    return body


# --- faults ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What to do about one reply: `retry` it, stop the worker (`fatal`), or fail the job."""

    retry: bool = False
    fatal: bool = False
    kind: str | None = None  # the job's failure kind when not retried
    retryable: bool = False  # whether the failed job may run again (a later attempt)


def decide(status: int | None, message: str = "") -> Decision:
    """How to treat a reply (`status` None: no reply at all: reset, refused, timed out)."""
    if status is None or status in _RETRY_STATUS or status >= 500:
        return Decision(retry=True, kind="upstream_unavailable", retryable=True)
    if status in (401, 403):
        return Decision(fatal=True)
    if any(m in message.lower() for m in _CONTEXT_MARKERS):
        return Decision(kind="context_too_long")
    return Decision(kind="bad_request")


def backoff_s(
    attempt: int, retry_after: float | None, base: float, cap: float, rng: random.Random
) -> float:
    """Exponential backoff with full jitter, never shorter than the server's `Retry-After`."""
    delay = rng.uniform(0, min(cap, base * 2**attempt))
    return max(delay, retry_after or 0.0)


def retry_after_s(value: str | None) -> float | None:
    """`Retry-After` in seconds (the HTTP-date form is rare from these servers: ignored)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def error_message(data: bytes) -> str:
    """The server's own words for an error reply: `error.message` or the start of the body."""
    try:
        doc = json.loads(data)
        err = doc.get("error", doc) if isinstance(doc, dict) else doc
        text = err.get("message", "") if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        text = data.decode("utf-8", "replace")
    return " ".join(str(text).split())[:300]


# --- replies -----------------------------------------------------------------------------------


def parse_reply(data: bytes, latency: float) -> tuple[list[str], list[str], Result]:
    """Texts and finish reasons of a 200 reply, and the `Result` holding its usage.

    Raises `UpstreamError(kind="bad_response")` for anything that is not a chat completion.
    """
    try:
        doc = json.loads(data)
        choices = sorted(doc["choices"], key=lambda c: c.get("index", 0))
        texts = [(c["message"].get("content") or "") for c in choices]
        reasons = [_finish(c.get("finish_reason"), t) for c, t in zip(choices, texts, strict=True)]
        usage = doc.get("usage") or {}
        prompt, completion = (
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
        )
        model, fingerprint = doc.get("model"), doc.get("system_fingerprint")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UpstreamError(
            f"the server's reply is not a chat completion ({type(exc).__name__}: "
            f"{error_message(data)[:120]!r})",
            "bad_response",
            retryable=True,
        ) from None
    if not choices:
        raise UpstreamError("the server's reply has no choices", "bad_response", retryable=True)
    extra = {"served_model": model, "system_fingerprint": fingerprint}
    result = Result(
        texts=texts,
        finish_reasons=reasons,
        prompt_tokens=prompt,
        visual_tokens=0,  # a server does not say how many of its prompt tokens were frames
        completion_tokens=[completion] + [0] * (len(texts) - 1),  # usage is per request
        latency_s=latency,
        batch_size=1,
        extra=extra,
    )
    return texts, reasons, result


def _finish(reason: str | None, text: str) -> str:
    if not text.strip():
        return "empty"
    return "length" if reason == "length" else "stop"


def merged(parts: list[Result]) -> Result:
    """One result of a job's samples, asked for in several requests."""
    first = parts[0]
    return Result(
        texts=[t for p in parts for t in p.texts],
        finish_reasons=[r for p in parts for r in p.finish_reasons],
        prompt_tokens=sum(p.prompt_tokens for p in parts),
        visual_tokens=0,
        completion_tokens=[c for p in parts for c in p.completion_tokens],
        latency_s=sum(p.latency_s for p in parts),
        batch_size=1,
        extra=first.extra,
    )


# --- the connection ----------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP connection to the server (one per thread); `abort` from any thread."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        parts = urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port
        self.path = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        if self._conn is None:
            kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            self._conn = kind(self.host, self.port, timeout=self.timeout_s)
        try:
            self._conn.request(method, self.path + path, body=body, headers=headers)
            reply = self._conn.getresponse()
            data = reply.read()
        except BaseException:
            self.close()
            raise
        if reply.getheader("connection", "").lower() == "close":
            self.close()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, data

    def abort(self) -> None:
        """Cut the connection: a request blocked on it fails at once."""
        conn = self._conn
        sock = getattr(conn, "sock", None) if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


# --- the backend -------------------------------------------------------------------------------


class Cancelled(Exception):
    """The worker is stopping: the request in flight was abandoned."""


class OpenAIBackend:
    """Requests in flight on `concurrency` threads; outcomes come back as they finish."""

    name = "openai"
    dtype = "remote"

    @classmethod
    def from_engine(cls, engine: dict, config: Any, device: str) -> OpenAIBackend:
        """The server the engine names (its URL and wire format are part of the engine; the rest
        of `openai` is the run's), checked to serve the model before any job is claimed."""
        shown = ("base_url", "image_format", "vllm_extensions")
        openai = config.openai.model_copy(
            update=config.openai.identity() | {k: engine[k] for k in shown if k in engine}
        )
        backend = cls(model=engine["model"], config=openai)
        backend.check()
        return backend

    def __init__(self, model: str, config: OpenAIConfig, seed: int | None = None) -> None:
        if config.base_url is None:
            raise ConfigError("backend = 'openai' needs openai.base_url")
        self.model, self.config = model, config
        self.concurrency = config.concurrency
        self.device = urlsplit(config.base_url).netloc[:64]  # where it ran: the server
        self._rng = random.Random(seed)
        self._todo: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._connections: list[Connection] = []
        self._cancelled = threading.Event()
        self._threads: list[threading.Thread] = []
        self._frame_urls = FrameURLs()
        self.in_flight = 0  # submitted, outcome not yet taken

    # -- the key --

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        name = self.config.api_key_env
        if name:
            key = os.environ.get(name)
            if not key:
                raise UpstreamAuthError(
                    f"the environment variable {name} (openai.api_key_env) is not set: export "
                    "it with the server's API key"
                )
            headers["Authorization"] = "Bearer " + key
        return headers

    def _auth_error(self, status: int) -> UpstreamAuthError:
        name = self.config.api_key_env
        what = f"the key in ${name} (openai.api_key_env)" if name else "a request without a key"
        fix = f"set {name} to a key it accepts" if name else "set openai.api_key_env"
        return UpstreamAuthError(
            f"{self.config.base_url} refused {what} (HTTP {status}): {fix}; the jobs stay ready"
        )

    def check(self) -> None:
        """Before any job is claimed: the key is set and accepted (`GET /models`), and the
        server serves `model`. A server that does not answer yet is not an error here."""
        headers = self._headers()
        conn = Connection(self.config.base_url or "", min(self.config.timeout_s, 30.0))
        try:
            status, _, data = conn.request("GET", "/models", None, headers)
        except _NETWORK_ERRORS as exc:
            log.warning("%s does not answer yet (%s): the worker retries", self.device, exc)
            return
        finally:
            conn.close()
        if status in (401, 403):
            raise self._auth_error(status)
        if status == 200:
            self._check_model(data)

    def _check_model(self, data: bytes) -> None:
        try:
            served = [m.get("id") for m in json.loads(data).get("data", [])]
        except (ValueError, AttributeError, TypeError):
            return
        if served and self.model not in served:
            raise ConfigError(
                f"{self.config.base_url} does not serve model {self.model!r} (it serves "
                f"{', '.join(map(str, served[:5]))}): set model to the served name"
            )

    # -- in flight --

    def start(self) -> None:
        """Start the request threads (once)."""
        if self._threads:
            return
        for i in range(self.concurrency):
            conn = Connection(self.config.base_url or "", self.config.timeout_s)
            self._connections.append(conn)
            t = threading.Thread(
                target=self._serve, args=(conn,), name=f"egoqa-http-{i}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def submit(self, tag: Any, request: Request) -> None:
        """Send a request; its outcome (a `Result` or an exception) comes back tagged."""
        self.start()
        self.in_flight += 1
        self._todo.put((tag, request))

    def next_outcome(self, timeout: float) -> tuple[Any, object] | None:
        """The next finished request's (tag, outcome), or None after `timeout` seconds."""
        try:
            item = self._done.get(timeout=timeout)
        except queue.Empty:
            return None
        self.in_flight -= 1
        return item

    def cancel(self) -> None:
        """Abandon everything in flight (a stop): connections cut, threads end, nothing recorded."""
        self._cancelled.set()
        for conn in self._connections:
            conn.abort()
        for _ in self._threads:
            self._todo.put(None)

    def _serve(self, conn: Connection) -> None:
        while True:
            item = self._todo.get()
            if item is None or self._cancelled.is_set():
                return
            tag, request = item
            try:
                outcome: object = self._generate_one(conn, request)
            except Exception as exc:  # noqa: BLE001 -- every outcome goes back to the worker
                outcome = exc
            if self._cancelled.is_set():
                return
            self._done.put((tag, outcome))

    # -- one request --

    def _generate_one(self, conn: Connection, request: Request) -> Result:
        """All samples of a request: one call with `n`, then one call per sample the server
        did not return (a server that ignores `n`)."""
        wanted = max(1, request.samples)
        parts: list[Result] = []
        got = 0
        while got < wanted:
            n = wanted if got == 0 else 1
            body = chat_body(request, self.model, self.config, n, got, self._frame_urls)
            result = self._call(conn, body)
            keep = wanted - got  # a server may return more than asked for
            result.texts, result.finish_reasons = result.texts[:keep], result.finish_reasons[:keep]
            result.completion_tokens = result.completion_tokens[:keep]
            parts.append(result)
            got += len(result.texts)
        return parts[0] if len(parts) == 1 else merged(parts)

    def _call(self, conn: Connection, body: dict[str, Any]) -> Result:
        data = json.dumps(body).encode()
        headers = self._headers()
        attempt, last = 0, ""
        while True:
            if self._cancelled.is_set():
                raise Cancelled("stopping")
            start = time.perf_counter()
            retry_after = None
            try:
                status, reply_headers, reply = conn.request(
                    "POST", "/chat/completions", data, headers
                )
            except _NETWORK_ERRORS as exc:
                status, reply = None, b""
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if status == 200:
                    return parse_reply(reply, time.perf_counter() - start)[2]
                retry_after = retry_after_s(reply_headers.get("retry-after"))
                last = f"HTTP {status}: {error_message(reply)}"
            decision = decide(status, last)
            if decision.fatal:
                raise self._auth_error(status or 0)
            if not decision.retry or attempt >= self.config.retries:
                kind = decision.kind or "bad_request"
                tries = f" after {attempt + 1} tries" if decision.retry else ""
                raise UpstreamError(f"{self.device}{tries}: {last}", kind, decision.retryable)
            delay = backoff_s(
                attempt, retry_after, self.config.backoff_s, self.config.max_backoff_s, self._rng
            )
            log.debug("%s: %s; retrying in %.2f s", self.device, last, delay)
            if self._cancelled.wait(delay):
                raise Cancelled("stopping")
            attempt += 1

    # -- the Backend protocol (a batch at once, e.g. for benchmarks) --

    def generate(self, requests: list[Request]) -> list[Result]:
        """Every request of the batch, `concurrency` at a time; raises the first failure."""
        for i, request in enumerate(requests):
            self.submit(i, request)
        outcomes: dict[int, object] = {}
        while len(outcomes) < len(requests):
            got = self.next_outcome(timeout=1.0)
            if got is not None:
                outcomes[got[0]] = got[1]
        results = []
        for i in range(len(requests)):
            outcome = outcomes[i]
            if isinstance(outcome, BaseException):
                raise outcome
            results.append(outcome)
        return results

    def free_memory_bytes(self) -> int | None:
        return None

    def clear_memory(self) -> None:
        return None
