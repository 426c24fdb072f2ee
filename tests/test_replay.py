"""Specifications of ``pdsim serve`` (pdsim.live.server: an OpenAI-compatible streaming endpoint on the
reference engine) and ``pdsim replay`` (pdsim.live.replay): a trace replayed against the real server
completes every request with the trace's token counts and records TTFT and inter-token times in the
simulator's request columns; a dead port, garbage streams, HTTP errors, early stream ends and timeouts
are recorded per request without a traceback; a non-loopback bind is refused without --allow-remote."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from pdsim.cli import app  # noqa: E402
from pdsim.errors import ConfigError  # noqa: E402
from pdsim.live.engine import EngineConfig, LiveEngine  # noqa: E402
from pdsim.live.replay import REPLAY_COLUMNS  # noqa: E402
from pdsim.live.server import check_host, make_server, prompt_ids  # noqa: E402
from pdsim.metrics.records import REQUEST_COLUMNS  # noqa: E402
from pdsim.workload import load_trace  # noqa: E402

SMALL = {
    "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 1000, "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
}
runner = CliRunner()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    p = tmp_path_factory.mktemp("model") / "small.json"
    p.write_text(json.dumps(SMALL))
    engine = LiveEngine(EngineConfig(model_config=str(p), kv_capacity_blocks=256, block_size=16))
    httpd, loop = make_server(engine, "127.0.0.1", 0, model_name="small")
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()
    loop.stop()
    torch.set_num_threads(old)


def _replay(endpoint, out, *extra, model="small", n=12):
    return runner.invoke(app, [
        "replay", "--endpoint", endpoint, "--model", model, "--trace", "traces/tiny/tiny.csv",
        "--max-requests", str(n), "--rate-scale", "8", "--max-prompt-tokens", "40", "--max-output-tokens", "6",
        "--timeout-s", "20", "--out", str(out), *extra])


def test_endpoint_models_and_completions(server):
    models = httpx.get(server + "/models").json()
    assert [m["id"] for m in models["data"]] == ["small"]
    r = httpx.post(server + "/completions", json={"model": "small", "prompt": "a b c d", "max_tokens": 4}, timeout=20)
    body = r.json()
    assert r.status_code == 200 and body["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}
    assert len(body["choices"][0]["token_ids"]) == 4
    with httpx.stream("POST", server + "/completions", timeout=20,
                      json={"model": "small", "prompt": [1, 2, 3], "max_tokens": 5, "stream": True,
                            "ignore_eos": True}) as s:
        lines = [ln for ln in s.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and len(lines) == 6
    events = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert [e["choices"][0]["finish_reason"] for e in events] == [None] * 4 + ["length"]
    # streaming and non-streaming generate the same greedy tokens
    r = httpx.post(server + "/completions", json={"model": "small", "prompt": [1, 2, 3], "max_tokens": 5}, timeout=20)
    assert r.json()["choices"][0]["token_ids"] == [e["choices"][0]["token_ids"][0] for e in events]
    # never servable, bad ids, unknown model
    assert httpx.post(server + "/completions", json={"prompt": [1], "max_tokens": 5000}, timeout=20).status_code == 400
    assert httpx.post(server + "/completions", json={"prompt": [5000], "max_tokens": 2}, timeout=20).status_code == 400
    assert httpx.post(server + "/completions", json={"model": "x", "prompt": [1]}, timeout=20).status_code == 404


def test_prompt_ids_and_host_check():
    assert len(prompt_ids(" a a  a\nb ", 1000)) == 4
    assert prompt_ids([3, 4], 1000) == [3, 4]
    with pytest.raises(ValueError):
        prompt_ids([1.5], 1000)
    check_host("127.0.0.1", False)
    check_host("::1", False)
    check_host("localhost", False)
    with pytest.raises(ConfigError, match="allow-remote"):
        check_host("0.0.0.0", False)
    check_host("0.0.0.0", True)
    res = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert res.exit_code == 2 and "--allow-remote" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_replay_against_reference_server(server, tmp_path):
    res = _replay(server, tmp_path / "run", "--concurrency", "8")
    assert res.exit_code == 0, res.output
    assert "completed 12/12" in res.output
    req = pd.read_csv(tmp_path / "run" / "requests.csv")
    assert list(req.columns) == REPLAY_COLUMNS and list(req.columns[:-1]) == REQUEST_COLUMNS
    trace = load_trace("traces/tiny/tiny.csv").iloc[:12]
    assert (req["status"] == "completed").all()
    assert req["output_tokens"].tolist() == trace["output_tokens"].clip(upper=6).tolist()
    assert req["prompt_tokens"].tolist() == trace["prompt_tokens"].clip(upper=40).tolist()
    assert (req["ttft_s"] > 0).all() and (req["finish_s"] >= req["first_token_s"]).all()
    tok = pd.read_csv(tmp_path / "run" / "tokens.csv")
    assert tok.groupby("request_id").size().tolist() == req["output_tokens"].tolist()
    multi = req[req["output_tokens"] > 1]
    assert (multi["itl_max_s"] > 0).all() and (multi["tpot_s"] > 0).all()
    summary = pd.read_csv(tmp_path / "run" / "summary.csv")
    assert summary.loc[0, "completed"] == 12 and summary.loc[0, "rejected"] == 0
    man = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert man["kind"] == "replay" and man["failed"] == 0 and man["concurrency"] == 8


def test_replay_text_prompts_all_at_zero(server, tmp_path):
    df = pd.DataFrame({"arrival_s": [0.0] * 4, "prompt_tokens": [5, 9, 3, 7], "output_tokens": [3, 1, 4, 2]})
    df.to_csv(tmp_path / "t.csv", index=False)
    res = runner.invoke(app, ["replay", "--endpoint", server, "--model", "small", "--trace", str(tmp_path / "t.csv"),
                              "--prompt-mode", "text", "--concurrency", "1", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    req = pd.read_csv(tmp_path / "run" / "requests.csv")
    assert (req["status"] == "completed").all()
    # closed loop with one slot: each request is sent after the previous one finished
    sent = req.sort_values("prefill_start_s")
    assert (sent["prefill_start_s"].to_numpy()[1:] >= sent["finish_s"].to_numpy()[:-1]).all()


def test_replay_dead_port_records_failures(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = _replay(f"http://127.0.0.1:{port}/v1", tmp_path / "run", n=5)
    assert res.exit_code == 0 and res.exception is None, res.output
    assert "completed 0/5" in res.output and "5 failed" in res.output and "Traceback" not in res.output
    req = pd.read_csv(tmp_path / "run" / "requests.csv")
    assert (req["status"] == "failed").all() and req["error"].str.contains("Connect").all()
    assert pd.read_csv(tmp_path / "run" / "summary.csv").loc[0, "completed"] == 0


class _Stub(BaseHTTPRequestHandler):
    """Answers by the request's max_tokens: 1 invalid JSON event, 2 no 'data:' prefix, 3 HTTP 500,
    4 ends early (no [DONE]), 5 too few tokens before [DONE], 6 hangs past the timeout."""

    protocol_version = "HTTP/1.0"

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        kind = body["max_tokens"]
        if kind == 3:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        ok = b'data: {"choices": [{"text": " x", "index": 0, "finish_reason": null}]}\n\n'
        if kind == 1:
            self.wfile.write(ok + b"data: {not json\n\n")
        elif kind == 2:
            self.wfile.write(b"garbage here\n\n")
        elif kind == 4:
            self.wfile.write(ok)
        elif kind == 5:
            self.wfile.write(ok + b"data: [DONE]\n\n")
        elif kind == 6:
            self.wfile.write(ok)
            self.wfile.flush()
            time.sleep(3)


def test_replay_garbage_server_records_failures(tmp_path):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        df = pd.DataFrame({"arrival_s": [0.0] * 6, "prompt_tokens": [4] * 6, "output_tokens": [1, 2, 3, 4, 5, 6]})
        df.to_csv(tmp_path / "t.csv", index=False)
        res = runner.invoke(app, ["replay", "--endpoint", f"http://127.0.0.1:{httpd.server_address[1]}/v1",
                                  "--model", "m", "--trace", str(tmp_path / "t.csv"), "--timeout-s", "1",
                                  "--out", str(tmp_path / "run")])
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert res.exit_code == 0 and res.exception is None, res.output
    assert "6 failed" in res.output
    err = pd.read_csv(tmp_path / "run" / "requests.csv").set_index("output_tokens")["error"]
    assert "malformed event" in err[1]
    assert "malformed stream line" in err[2]
    assert "HTTP 500" in err[3]
    assert "without [DONE]" in err[4]
    assert "expected 5 tokens, got 1" in err[5]
    assert "timeout" in err[6]
