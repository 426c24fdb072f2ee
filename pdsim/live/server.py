"""``pdsim serve``: an OpenAI-compatible HTTP endpoint on the reference engine (colocated).

- ``POST /v1/completions``: ``model``, ``prompt`` (a list of token ids, or a string whose tokens are its
  whitespace-separated words: N words = N tokens, each word mapped to an id by CRC32 modulo the
  vocabulary), ``max_tokens`` (default 16), ``stream`` (Server-Sent Events, one event per generated
  token, then ``data: [DONE]``), ``ignore_eos`` (accepted; the engine always ignores EOS). A generated
  token's text is ``" <token id>"``; each choice also carries the non-standard ``token_ids``.
- ``GET /v1/models``: the one served model.

One engine thread (``ServingLoop``) owns the torch model (not thread-safe) and runs the iterations of
``pdsim.live.engine.EngineCore`` (the same as ``LiveEngine.run``: the simulator's scheduler and KV
block manager): HTTP handler threads
(stdlib ``ThreadingHTTPServer``) submit requests to a queue and read their tokens from a per-request
queue. A request that can never be served (``LiveEngine.check_request``) is answered 400. A client
that disconnects does not cancel its request (the scheduler has no abort): it runs to completion.
"""

from __future__ import annotations

import ipaddress
import json
import queue
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any, Optional

import typer

from pdsim.errors import ConfigError, PdsimError
from pdsim.live import options as opts

_DONE = object()


class _Job:
    __slots__ = ("request", "prompt", "tokens", "error")

    def __init__(self, request, prompt: list[int]) -> None:
        self.request = request
        self.prompt = prompt
        self.tokens: queue.Queue = queue.Queue()  # token ids, then _DONE (or an Exception)


class ServingLoop:
    """The engine thread: continuous batching of submitted requests on ``engine.model``.

    Args:
        engine: a ``pdsim.live.engine.LiveEngine`` (its model and config; its ``run`` is not used).
    """

    def __init__(self, engine) -> None:
        from pdsim.live.engine import EngineCore

        self.engine = engine
        self._prompts: dict[int, list[int]] = {}
        self._generated: dict[int, list[int]] = {}
        self.core = EngineCore(engine, self._prompts, self._generated, lambda: time.perf_counter() - self.t0)
        self._inbox: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._ids = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="pdsim-engine", daemon=True)
        self.t0 = time.perf_counter()
        self.error: BaseException | None = None
        self._jobs: dict[int, _Job] = {}

    def start(self) -> ServingLoop:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def submit(self, prompt: list[int], max_tokens: int) -> _Job:
        """Queue a request; raises ConfigError if it can never be served."""
        from pdsim.core.request import Request

        if self.error is not None:
            raise ConfigError(f"engine stopped: {self.error}")
        with self._lock:
            rid = self._ids
            self._ids += 1
        self.engine.check_request(rid, len(prompt), max_tokens)
        vocab = self.engine.vocab_size
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise ConfigError(f"prompt token id {bad[0]} outside the vocabulary [0, {vocab})")
        req = Request(rid, time.perf_counter() - self.t0, len(prompt), max_tokens)
        req.prefill_instance = req.decode_instance = 0
        job = _Job(req, prompt)
        self._inbox.put(job)
        return job

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # an engine bug: fail every waiting request, keep the server answering
            self.error = exc
            for job in list(self._jobs.values()):
                job.tokens.put(exc)
            while not self._inbox.empty():
                self._inbox.get_nowait().tokens.put(exc)

    @property
    def iterations(self) -> int:
        return self.core.iterations

    def _loop(self) -> None:
        from pdsim.errors import InvariantViolation

        core = self.core
        while not self._stop.is_set():
            block = not self._jobs
            while True:
                try:
                    job = self._inbox.get(timeout=0.1) if block else self._inbox.get_nowait()
                except queue.Empty:
                    break
                block = False
                rid = job.request.id
                self._jobs[rid] = job
                self._prompts[rid] = job.prompt
                self._generated[rid] = []
                core.enqueue(job.request)
            it = core.step()
            if it is None:
                if self._jobs:
                    raise InvariantViolation(f"engine idle with {len(self._jobs)} requests unfinished")
                continue
            for r in it.emitted:
                self._jobs[r.id].tokens.put(self._generated[r.id][-1])
            for r in it.finished:
                del self._generated[r.id], self._prompts[r.id]
                self._jobs.pop(r.id).tokens.put(_DONE)


def prompt_ids(prompt: Any, vocab_size: int) -> list[int]:
    """The token ids of a request's ``prompt``: a list of ints as is; a string's whitespace-separated
    words, each mapped to ``crc32(word) % vocab_size``. Raises ValueError."""
    if isinstance(prompt, str):
        return [zlib.crc32(w.encode()) % vocab_size for w in prompt.split()]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        return prompt_ids(prompt[0], vocab_size)  # a batch of one prompt
    if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return list(prompt)
    raise ValueError("prompt must be a string or a list of token ids (one prompt)")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str) -> None:
        self._json(code, {"error": {"message": message, "type": "invalid_request_error", "code": code}})

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [
                {"id": self.server.model_name, "object": "model", "created": self.server.created, "owned_by": "pdsim"}]})
        else:
            self._error(404, f"no route GET {self.path}")

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/completions":
            self._error(404, f"no route POST {self.path}")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            model = body.get("model", self.server.model_name)
            if model != self.server.model_name:
                self._error(404, f"model {model!r} not served (this server serves {self.server.model_name!r})")
                return
            ids = prompt_ids(body.get("prompt"), self.server.loop.engine.vocab_size)
            if not ids:
                raise ValueError("prompt holds no tokens")
            max_tokens = body.get("max_tokens", 16)
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
                raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
            stream = bool(body.get("stream", False))
            job = self.server.loop.submit(ids, max_tokens)
        except (ValueError, ConfigError) as exc:
            self._error(400, str(exc))
            return
        rid, created = f"cmpl-{uuid.uuid4().hex[:16]}", int(time.time())

        def chunk(text: str, toks: list[int], finish: str | None, obj: str) -> dict:
            return {"id": rid, "object": obj, "created": created, "model": model,
                    "choices": [{"index": 0, "text": text, "token_ids": toks, "logprobs": None,
                                 "finish_reason": finish}]}

        if not stream:
            toks = []
            while (t := job.tokens.get()) is not _DONE:
                if isinstance(t, BaseException):
                    self._error(500, f"engine error: {t}")
                    return
                toks.append(t)
            body = chunk("".join(f" {t}" for t in toks), toks, "length", "text_completion")
            body["usage"] = {"prompt_tokens": len(ids), "completion_tokens": len(toks),
                             "total_tokens": len(ids) + len(toks)}
            self._json(200, body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(payload: str) -> None:
            data = f"data: {payload}\n\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        n = 0
        try:
            while True:
                t = job.tokens.get()
                if t is _DONE:
                    break
                if isinstance(t, BaseException):
                    send(json.dumps({"error": {"message": f"engine error: {t}", "code": 500}}))
                    break
                n += 1
                send(json.dumps(chunk(f" {t}", [t], "length" if n == max_tokens else None, "text_completion")))
            send("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # client gone; the request still runs to its end
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, loop: ServingLoop, model_name: str) -> None:
        super().__init__(addr, _Handler)
        self.loop = loop
        self.model_name = model_name
        self.created = int(time.time())


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback bind address unless ``allow_remote`` (ConfigError)."""
    if allow_remote or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(f"--host {host} is not a loopback address: the server has no authentication; "
                          "pass --allow-remote to bind it anyway")


def make_server(engine, host: str = "127.0.0.1", port: int = 8000, *, model_name: str = "pdsim-tiny",
                allow_remote: bool = False) -> tuple[_Server, ServingLoop]:
    """A started engine loop and a bound (not yet serving) HTTP server; call ``serve_forever`` on it,
    then ``shutdown()`` / ``server_close()`` and ``loop.stop()``. Port 0 picks a free port
    (``server.server_address[1]``)."""
    check_host(host, allow_remote)
    loop = ServingLoop(engine).start()
    try:
        httpd = _Server((host, port), loop, model_name)
    except OSError as exc:
        loop.stop()
        raise ConfigError(f"cannot bind {host}:{port}: {exc}") from None
    return httpd, loop


def serve_command(
    host: Annotated[str, typer.Option("--host", help="Bind address (loopback unless --allow-remote).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0: any free port).")] = 8000,
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="Allow a non-loopback --host (no authentication!).")] = False,
    model_name: Annotated[str, typer.Option("--served-model-name", help="Model name of /v1/models and requests.")] = "pdsim-tiny",
    model_config: opts.ModelConfig = None,
    dtype: opts.Dtype = "fp32",
    device: opts.Device = "cpu",
    seed: Annotated[int, typer.Option(help="Seed of the weights.")] = 0,
    max_num_batched_tokens: opts.MaxNumBatchedTokens = 8192,
    max_num_seqs: opts.MaxNumSeqs = 256,
    block_size: opts.BlockSize = 16,
    kv_capacity_tokens: Annotated[int, typer.Option("--kv-capacity-tokens", help="KV capacity in tokens (rounded down to whole blocks).")] = 32768,
    watermark_fraction: opts.WatermarkFraction = 0.01,
    chunked_prefill: opts.ChunkedPrefill = False,
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch.set_num_threads (default: torch's default).")] = None,
) -> None:
    """Serve the reference engine behind an OpenAI-compatible /v1/completions endpoint (streaming SSE)."""
    try:
        check_host(host, allow_remote)
        if block_size < 1 or kv_capacity_tokens < block_size:
            raise ConfigError(f"--kv-capacity-tokens must hold at least one block ({block_size} tokens)")
        if threads is not None and threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        import torch

        from pdsim.live.engine import EngineConfig, LiveEngine

        if threads is not None:
            torch.set_num_threads(threads)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available in this torch build")
        engine = LiveEngine(EngineConfig(
            model_config=None if model_config is None else str(model_config), dtype=dtype, device=device,
            seed=seed, max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
            block_size=block_size, kv_capacity_blocks=kv_capacity_tokens // block_size,
            watermark_fraction=watermark_fraction, chunked_prefill=chunked_prefill))
        httpd, loop = make_server(engine, host, port, model_name=model_name, allow_remote=allow_remote)
    except PdsimError as exc:
        opts.fail(str(exc))
    h, p = httpd.server_address[:2]
    typer.echo(f"serving {model_name} on http://{h}:{p}/v1 (KV {engine.config.kv_capacity_tokens} tokens, "
               f"{torch.get_num_threads()} threads); Ctrl-C stops")
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        loop.stop()
