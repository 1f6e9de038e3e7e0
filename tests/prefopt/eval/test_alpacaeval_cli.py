"""``prefopt eval alpacaeval``: tiny policy + tiny RM judge end to end, kill-and-resume, HTTP judge
against a real local server, LM judge, leaderboard and bad inputs. Dev instructions from the shared
slice (``shared_data``)."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from prefopt.core.errors import ConfigError, DataError, ModelLoadError
from prefopt.eval.alpacaeval import cli_main

REPO = Path(__file__).resolve().parents[3]
COMMON = ["--max-new-tokens", "6", "--gen-batch-size", "2", "--judge-batch-size", "2"]


def _ref(shared_data: Path) -> Path:
    return shared_data / "alpaca-eval" / "reference_gpt4_turbo_gpt4_1106_preview.dev50.jsonl"


def _run(out: Path, *args: str) -> dict:
    assert cli_main(["--out", str(out), *args]) == 0
    return json.loads((out / "results.json").read_text())


def _lines(p: Path) -> int:
    return len(p.read_text().splitlines()) if p.exists() else 0


def test_tiny_policy_rm_judge_end_to_end(tmp_path, shared_data, bt_dir):
    out = tmp_path / "ae"
    args = ["--policy", "tiny-llama", "--judge", "rm", "--judge-model", str(bt_dir), "--limit", "4",
            "--reference", str(_ref(shared_data)), *COMMON]
    res = _run(out, *args)
    outputs = json.loads((out / "model_outputs.json").read_text())
    refs = [json.loads(x) for x in _ref(shared_data).read_text().splitlines()[:4]]
    assert [o["instruction"] for o in outputs] == [r["instruction"] for r in refs]
    assert all(set(o) == {"instruction", "output", "generator", "dataset"} and o["generator"] == "tiny-llama"
               for o in outputs)
    ann = json.loads((out / "annotations.json").read_text())
    assert [a["output_1"] for a in ann] == [r["output"] for r in refs]
    assert all(1.0 <= a["preference"] <= 2.0 and a["generator_1"] == "gpt4_1106_preview" for a in ann)
    assert res["benchmark"] == "AlpacaEval-style" and res["n_total"] == 4 and res["lc_status"] == "unavailable"
    assert res["win_rate"] == pytest.approx(100 * sum(a["preference"] - 1 for a in ann) / 4)
    before = [(out / f).read_bytes() for f in ("outputs.jsonl", "annotations.jsonl")]
    assert _run(out, *args) == res  # rerun: nothing regenerated or re-judged
    assert [(out / f).read_bytes() for f in ("outputs.jsonl", "annotations.jsonl")] == before


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PREFOPT_EVAL_BATCH_DELAY": "0.5", "PREFOPT_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "prefopt.cli", "eval", "alpacaeval", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, path: Path, n: int) -> None:
    deadline = time.time() + 300
    while _lines(path) < n:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_kill_during_generation_and_judging_resumes_identically(tmp_path, shared_data, bt_dir):
    base = ["--policy", "tiny-llama", "--judge", "rm", "--judge-model", str(bt_dir), "--limit", "5",
            "--reference", str(_ref(shared_data)), "--max-new-tokens", "6", "--gen-batch-size", "1",
            "--judge-batch-size", "1", "--temperature", "0.8", "--seed", "3"]
    clean = _run(tmp_path / "clean", *base)
    out = tmp_path / "killed"
    args = [*base, "--out", str(out)]
    _kill_when(_spawn(args), out / "outputs.jsonl", 2)
    assert 2 <= _lines(out / "outputs.jsonl") < 5 and not (out / "annotations.jsonl").exists()
    _kill_when(_spawn(args), out / "annotations.jsonl", 2)
    assert _lines(out / "outputs.jsonl") == 5 and 2 <= _lines(out / "annotations.jsonl") < 5
    res = _run(out, *base)
    assert res == clean
    for f in ("model_outputs.json", "annotations.json"):
        assert (out / f).read_text() == (tmp_path / "clean" / f).read_text()
    assert _lines(out / "outputs.jsonl") == 5 and _lines(out / "annotations.jsonl") == 5


class _Server:
    """OpenAI-style chat-completions stub on 127.0.0.1: "M" preferred with probability 0.8."""

    def __init__(self, reply: dict | None = None):
        self.requests: list[tuple[dict, dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((dict(self.headers), body))
                if len(server.requests) > 20:  # bounded: a runaway client gets errors
                    self.send_response(400)
                    self.end_headers()
                    return
                reply = server.reply or {"choices": [{"message": {"role": "assistant", "content": "M"},
                    "logprobs": {"content": [{"token": "M", "logprob": math.log(0.8), "top_logprobs": [
                        {"token": "M", "logprob": math.log(0.8)}, {"token": "m", "logprob": math.log(0.2)}]}]}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.reply = reply
        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _outputs_file(tmp_path: Path, shared_data: Path, n: int, fn=lambda i, r: f"My answer {i}.") -> Path:
    refs = [json.loads(x) for x in _ref(shared_data).read_text().splitlines()[:n]]
    path = tmp_path / "model_outputs.json"
    path.write_text(json.dumps([{"instruction": r["instruction"], "output": fn(i, r), "generator": "mine",
                                 "dataset": r["dataset"]} for i, r in enumerate(refs)]))
    return path


def test_http_judge_local_server(tmp_path, shared_data, monkeypatch):
    secret = "sk-test-SECRET-123456"
    monkeypatch.setenv("MY_JUDGE_KEY", secret)
    outputs = _outputs_file(tmp_path, shared_data, 3)
    out = tmp_path / "http"
    with _Server() as srv:
        res = _run(out, "--model-outputs", str(outputs), "--judge", "http", "--judge-base-url", srv.url,
                   "--judge-model", "gpt-test", "--judge-api-key-env", "MY_JUDGE_KEY", "--limit", "3",
                   "--reference", str(_ref(shared_data)))
    assert len(srv.requests) == 3
    refs = [json.loads(x) for x in _ref(shared_data).read_text().splitlines()[:3]]
    ann = json.loads((out / "annotations.json").read_text())
    for (headers, body), a, r in zip(srv.requests, ann, refs, strict=False):
        assert headers["Authorization"] == f"Bearer {secret}"
        assert body["model"] == "gpt-test" and body["max_tokens"] == 1 and body["logprobs"] is True
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        user = body["messages"][1]["content"]
        assert r["instruction"] in user and r["output"] in user and a["output_2"] in user
        assert '"model_identifier": "m"' in user and "{output_1}" not in user
        # the server prefers "M" at 0.8: the model gets 0.8 when shown as M, 0.2 when shown as m
        assert a["preference"] == pytest.approx(1.8 if a["model_shown_as"] == "M" else 1.2)
        first = user.index('"model_identifier": "m"')
        assert (user.index(a["output_2"], first) < user.index('"model_identifier": "M"')) == (a["model_shown_as"] == "m")
    assert res["judge"].startswith("http:gpt-test") and res["benchmark"] == "AlpacaEval-style"
    for f in out.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f


def test_http_judge_unparsable_reply_is_missing(tmp_path, shared_data, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    outputs = _outputs_file(tmp_path, shared_data, 2)
    out = tmp_path / "h2"
    args = ["--model-outputs", str(outputs), "--judge", "http", "--judge-model", "x", "--limit", "2",
            "--reference", str(_ref(shared_data))]
    with _Server(reply={"choices": [{"message": {"role": "assistant", "content": "both"}}]}) as srv:
        with pytest.raises(DataError, match=r"annotations.jsonl, field 'preference': 2 of 2 judgements failed "
                           r"\(first: unparsable judge answer: answer 'both' is neither 'm' nor 'M'.*a rerun"):
            _run(out, "--judge-base-url", srv.url, *args)
        assert "Authorization" not in srv.requests[0][0] and len(srv.requests) == 2
        rows = [json.loads(x) for x in (out / "annotations.jsonl").read_text().splitlines()]
        assert [(r["preference"], r["retry"]) for r in rows] == [(None, True), (None, True)]
        assert not (out / "results.json").exists()
        srv.reply = None  # the server is healthy again: the failures are retried, not cached as finished
        res = _run(out, "--judge-base-url", srv.url, *args)
    assert len(srv.requests) == 4 and res["n_total"] == 2
    ann = json.loads((out / "annotations.json").read_text())
    assert all(a["preference"] == pytest.approx(1.8 if a["model_shown_as"] == "M" else 1.2) for a in ann)


def test_lm_judge_and_identical_outputs(tmp_path, shared_data, tiny_model_dir):
    outputs = _outputs_file(tmp_path, shared_data, 3, fn=lambda i, r: r["output"] if i == 0 else "Short.")
    out = tmp_path / "lm"
    res = _run(out, "--model-outputs", str(outputs), "--judge", "lm", "--judge-model", str(tiny_model_dir),
               "--limit", "3", "--reference", str(_ref(shared_data)), "--max-length", "512")
    ann = json.loads((out / "annotations.json").read_text())
    assert ann[0]["preference"] == 1.5  # identical to the reference: a tie without asking
    assert all(1 < a["preference"] < 2 for a in ann[1:]) and res["n_total"] == 3


def test_leaderboard(tmp_path):
    for name, prefs in (("a", [2, 2, 1]), ("b", [1, 1, 1.5])):
        d = tmp_path / name
        d.mkdir()
        from prefopt.eval.alpacaeval_metrics import alpacaeval_metrics

        ann = [{"preference": p, "output_2": "x" * 10, "generator_2": name, "generator_1": "ref",
                "annotator": "rm"} for p in prefs]
        (d / "results.json").write_text(json.dumps(alpacaeval_metrics(ann, compute_lc=False)))
    assert cli_main(["--leaderboard", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "lb")]) == 0
    table = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert table.index("| a |") < table.index("| b |") and (tmp_path / "lb" / "leaderboard.png").is_file()


def test_bad_inputs(tmp_path, shared_data, bt_dir):
    ref = str(_ref(shared_data))
    judge = ["--judge", "rm", "--judge-model", str(bt_dir), "--reference", ref, "--limit", "3"]
    outputs = _outputs_file(tmp_path, shared_data, 3, fn=lambda i, r: "" if i == 1 else "ok")
    with pytest.raises(DataError, match=r"model_outputs.json.*line 2.*field 'output'.*empty"):
        _run(tmp_path / "o1", "--model-outputs", str(outputs), *judge)
    data = json.loads(outputs.read_text())
    data[1]["output"] = "fine"
    del data[2]["instruction"]
    outputs.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"line 3.*field 'instruction'.*missing"):
        _run(tmp_path / "o2", "--model-outputs", str(outputs), *judge)
    outputs.write_text(json.dumps(data[:2]))
    with pytest.raises(DataError, match="2 outputs for 3 instructions"):
        _run(tmp_path / "o3", "--model-outputs", str(outputs), *judge)
    bad_ref = tmp_path / "ref.jsonl"
    rows = [json.loads(x) for x in _ref(shared_data).read_text().splitlines()[:3]]
    rows[1].pop("output")
    bad_ref.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"ref.jsonl.*line 2.*field 'output'"):
        _run(tmp_path / "o4", "--policy", "tiny-llama", "--judge", "rm", "--judge-model", str(bt_dir),
             "--reference", str(bad_ref))
    with pytest.raises(ModelLoadError, match="does not exist"):
        _run(tmp_path / "o5", "--policy", str(tmp_path / "no_such_model"), *judge, *COMMON)
    with pytest.raises(DataError, match="neither a known name"):
        _run(tmp_path / "o6", "--policy", "tiny-llama", "--reference", "gpt5")
    with pytest.raises(ConfigError, match="needs --judge-model"):
        _run(tmp_path / "o7", "--model-outputs", str(_outputs_file(tmp_path, shared_data, 3)), "--judge", "lm",
             "--reference", ref, "--limit", "3")
