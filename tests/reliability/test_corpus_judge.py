"""Bad-input corpus, the HTTP judge (issue 17 items 3 and 10) against a real local server: failures keep
the judgements already made, unparsable answers are retried, malformed bodies and dropped connections
give clear errors, Retry-After is honoured, only http(s) URLs are accepted.
"""
from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from prefopt.core.errors import ConfigError, DataError
from prefopt.eval.alpacaeval import cli_main
from prefopt.eval.judges.http import HTTPJudge, explain_preference, retry_after_seconds

GOOD = {"choices": [{"message": {"role": "assistant", "content": "M"}, "logprobs": {"content": [
    {"token": "M", "logprob": math.log(0.8), "top_logprobs": [{"token": "M", "logprob": math.log(0.8)},
                                                              {"token": "m", "logprob": math.log(0.2)}]}]}}]}


class Script:
    """A local chat-completions server answering from a list of (status, headers, body bytes); the last
    entry repeats. ``None`` as status closes the connection without an answer."""

    def __init__(self, answers):
        self.answers, self.calls = list(answers), 0
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                status, headers, body = script.answers[min(script.calls, len(script.answers) - 1)]
                script.calls += 1
                if status is None:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _ok(body=GOOD):
    return (200, {"Content-Type": "application/json"}, json.dumps(body).encode())


def _judge(url, sleeps, **kw):
    return HTTPJudge(url, "gpt-test", sleep=sleeps.append, **kw)


def _ask(judge):
    return judge.annotate(["Say hi"], ["Hello."], ["Hi there!"], keys=[0])[0]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://x/v1", "localhost:8000/v1"],
                         ids=["file_url", "ftp_url", "no_scheme"])
def test_only_http_urls(url):
    with pytest.raises(ConfigError, match=r"only http:// and https:// URLs are allowed"):
        HTTPJudge(url, "m")


def test_retry_after_is_honoured_after_a_429():
    sleeps: list[float] = []
    with Script([(429, {"Retry-After": "7"}, b"slow down"), _ok()]) as srv:
        row = _ask(_judge(srv.url, sleeps))
    assert sleeps == [7.0] and srv.calls == 2 and row["preference"] == pytest.approx(1.8 if row["model_shown_as"]
                                                                                     == "M" else 1.2)
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)


def test_backoff_grows_and_then_gives_a_clear_error():
    sleeps: list[float] = []
    with Script([(503, {}, b"busy")]) as srv:
        with pytest.raises(ConfigError) as info:
            _ask(_judge(srv.url, sleeps, max_retries=4))
    assert sleeps == [1.0, 2.0, 4.0, 8.0] and srv.calls == 5
    assert str(info.value) == (f"http judge failed after 5 attempt(s): HTTP 503 from {srv.url}/chat/completions; "
                               "judgements made so far are saved and a rerun continues from there")


@pytest.mark.parametrize("body,detail", [
    (b"\xff\xfe not utf8", "is not UTF-8 (byte 0)"),
    (b"<html>oops</html>", "is not JSON (Expecting value: b'<html>oops</html>')"),
], ids=["non_utf8_body", "non_json_body"])
def test_malformed_bodies_are_clear_errors(body, detail):
    with Script([(200, {}, body)]) as srv:
        with pytest.raises(ConfigError, match=rf"http judge failed after 2 attempt\(s\): the body from "
                           rf"{srv.url}/chat/completions {detail.replace('(', '[(]').replace(')', '[)]')}"):
            _ask(_judge(srv.url, [], max_retries=1))


def test_a_dropped_connection_is_retried():
    sleeps: list[float] = []
    with Script([(None, {}, b""), _ok()]) as srv:
        row = _ask(_judge(srv.url, sleeps))
    assert sleeps == [1.0] and row["preference"] in (pytest.approx(1.8), pytest.approx(1.2))


def test_hung_server_times_out():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)  # accepts the connection, never answers
    try:
        with pytest.raises(ConfigError, match=r"http judge failed after 2 attempt\(s\): .*timed out"):
            _ask(HTTPJudge(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", "m", timeout=0.2, max_retries=1,
                           sleep=lambda s: None))
    finally:
        sock.close()


@pytest.mark.parametrize("body,why", [
    ([1, 2], "the body is a JSON list, not an object"),
    ({"choices": "M"}, "'choices' is not a non-empty list of objects: 'M'"),
    ({"choices": [{"message": {"content": "both"}}]}, "answer 'both' is neither 'm' nor 'M' and has no usable logprobs"),
    ({"choices": [{"logprobs": {"content": [{"token": "M"}]}, "message": {"content": "x"}}]},
     "answer 'x' is neither 'm' nor 'M' and has no usable logprobs"),
], ids=["list_body", "choices_not_list", "plain_text", "missing_logprob"])
def test_unparsable_answers_are_explained(body, why):
    assert explain_preference(body) == (None, why)


def test_missing_logprob_falls_back_to_the_text():
    assert explain_preference({"choices": [{"logprobs": {"content": [{"token": "M"}]},
                                            "message": {"content": "M"}}]}) == (1.0, "")


def _outputs(tmp_path, shared_data, n):
    ref = shared_data / "alpaca-eval" / "reference_gpt4_turbo_gpt4_1106_preview.dev50.jsonl"
    rows = [json.loads(x) for x in ref.read_text().splitlines()[:n]]
    path = tmp_path / "model_outputs.json"
    path.write_text(json.dumps([{"instruction": r["instruction"], "output": f"answer {i}", "generator": "mine",
                                 "dataset": r["dataset"]} for i, r in enumerate(rows)]))
    return ["--model-outputs", str(path), "--judge", "http", "--judge-model", "x", "--limit", str(n),
            "--reference", str(ref), "--judge-batch-size", "4", "--judge-max-retries", "0"]


def test_a_failure_keeps_the_judgements_already_made(tmp_path, shared_data):
    out = tmp_path / "ae"
    args = _outputs(tmp_path, shared_data, 3)
    with Script([_ok(), _ok(), (400, {}, b"bad request")]) as srv:
        with pytest.raises(ConfigError, match=r"HTTP 400 from .*judgements made so far are saved"):
            cli_main(["--out", str(out), "--judge-base-url", srv.url, *args])
        kept = [json.loads(x) for x in (out / "annotations.jsonl").read_text().splitlines()]
        assert [r["index"] for r in kept] == [0, 1]  # paid work of the chunk is on disk
        first_two = (out / "annotations.jsonl").read_text()
        srv.answers = [_ok()]
        srv.calls = 0
        assert cli_main(["--out", str(out), "--judge-base-url", srv.url, *args]) == 0
    assert srv.calls == 1  # only the missing judgement was asked again
    assert (out / "annotations.jsonl").read_text().startswith(first_two)  # earlier judgements unchanged
    lines = (out / "annotations.jsonl").read_text().splitlines()
    assert [json.loads(x)["index"] for x in lines] == [0, 1, 2]


def test_limit_must_be_positive(tmp_path):
    for value in ("0", "-2"):
        with pytest.raises(ConfigError, match=rf"--limit must be >= 1, got {value}"):
            cli_main(["--out", str(tmp_path / "x"), "--limit", value, "--model-outputs", "none.json"])
    assert not (tmp_path / "x").exists()


def test_judge_timeout_must_be_finite(tmp_path):
    with pytest.raises(ConfigError, match=r"--judge-timeout must be a finite number >= 0, got inf"):
        cli_main(["--out", str(tmp_path / "x"), "--judge-timeout", "inf", "--model-outputs", "none.json"])


def test_unparsable_rows_are_failures_not_results(tmp_path, shared_data):
    out = tmp_path / "ae"
    args = _outputs(tmp_path, shared_data, 2)
    with Script([_ok({"choices": [{"message": {"content": "{}"}}]})]) as srv:
        with pytest.raises(DataError, match=r"2 of 2 judgements failed"):
            cli_main(["--out", str(out), "--judge-base-url", srv.url, *args])
        srv.answers = [_ok()]
        assert cli_main(["--out", str(out), "--judge-base-url", srv.url, *args]) == 0
    assert srv.calls == 4 and json.loads((out / "results.json").read_text())["n_total"] == 2
