"""AlpacaEval judge over an OpenAI-compatible chat-completions API, with AlpacaEval's ranking prompt.

The prompt template is read at run time from the installed ``alpaca_eval`` package
(``evaluators_configs/<config>/configs.yaml`` -> ``prompt_template``; default config
``weighted_alpaca_eval_gpt4_turbo``, whose template asks for the identifier "m" or "M" of the better
output), so nothing of it is copied into this repository. Its ``<|im_start|>role ... <|im_end|>`` blocks
become chat messages. As in AlpacaEval the two outputs are shown in a random order (seeded per
instruction); ``output_1`` is labelled "m" and ``output_2`` "M". The preference is
``P(label of the model's output)`` renormalised over {m, M} from ``top_logprobs`` when the API returns
them (AlpacaEval's ``logprob_parser``), else 1/0 from the returned text; anything else is unparsable
(preference None, recorded with ``retry: true`` and the reason, and retried by the next run).

Requests go to ``http(s)`` URLs only. Network errors, dropped connections, 429 and 5xx answers are
retried with exponential backoff (1, 2, 4, ... s, at most 60 s) that honours a ``Retry-After`` header;
``timeout`` bounds every request. A body that is not a UTF-8 JSON object is an error naming the URL.

The API key is read from the environment variable named by ``api_key_env`` and only ever put in the
``Authorization`` header: it is never logged, stored in the judge's state beyond the request, or written.
"""
from __future__ import annotations

import email.utils
import http.client
import importlib.util
import json
import math
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Sequence

from prefopt.core.errors import ConfigError
from prefopt.eval.judges.base import flatten_prompt as _flatten
from prefopt.eval.judges.base import identical

DEFAULT_CONFIG = "weighted_alpaca_eval_gpt4_turbo"
_BLOCK = re.compile(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>", re.S)


def alpaca_eval_config_dir() -> Path:
    """``alpaca_eval/evaluators_configs`` of the installed package (found without importing it)."""
    spec = importlib.util.find_spec("alpaca_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the http judge reads its prompt from the alpaca_eval package: "
                          "pip install -e .[eval]")
    return Path(list(spec.submodule_search_locations)[0]) / "evaluators_configs"


def load_prompt_template(config: str = DEFAULT_CONFIG) -> tuple[str, dict[str, Any]]:
    """``(template text, completions_kwargs)`` of an alpaca_eval annotator config."""
    import yaml

    cfg_file = alpaca_eval_config_dir() / config / "configs.yaml"
    if not cfg_file.is_file():
        raise ConfigError(f"alpaca_eval annotator config '{config}' not found ({cfg_file})")
    cfg = yaml.safe_load(cfg_file.read_text(encoding="utf-8"))[config]
    template = (alpaca_eval_config_dir() / cfg["prompt_template"]).read_text(encoding="utf-8")
    return template, dict(cfg.get("completions_kwargs") or {})


def render_messages(template: str, instruction: str, output_1: str, output_2: str) -> list[dict[str, str]]:
    """Fill ``{instruction}``, ``{output_1}``, ``{output_2}`` and split the chat blocks into messages."""
    filled = template
    for key, val in (("instruction", instruction), ("output_1", output_1), ("output_2", output_2)):
        filled = filled.replace("{" + key + "}", val)
    msgs = [{"role": r, "content": c.strip()} for r, c in _BLOCK.findall(filled)]
    return msgs or [{"role": "user", "content": filled}]


def _logprob_preference(choice: dict[str, Any], labels: tuple[str, str]) -> float | None:
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content or not isinstance(content[0], dict):
        return None
    probs = {lab: 0.0 for lab in labels}
    for top in content[0].get("top_logprobs") or [content[0]]:
        if not isinstance(top, dict):
            continue
        tok, value = str(top.get("token", "")).strip(), top.get("logprob")
        if tok in probs and isinstance(value, (int, float)) and not isinstance(value, bool):
            probs[tok] += math.exp(float(value))
    total = sum(probs.values())
    return probs[labels[1]] / total if total > 0 and math.isfinite(total) else None


def explain_preference(response: Any, labels: tuple[str, str] = ("m", "M")) -> tuple[float | None, str]:
    """``(P(labels[1] = output_2 is better), "")`` or ``(None, why it is unparsable)``."""
    if not isinstance(response, dict):
        return None, f"the body is a JSON {type(response).__name__}, not an object"
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None, f"'choices' is not a non-empty list of objects: {str(choices)[:80]!r}"
    choice = choices[0]
    p = _logprob_preference(choice, labels)
    if p is not None:
        return p, ""
    message = choice.get("message")
    text = str((message.get("content") if isinstance(message, dict) else None) or "").strip()
    if text in labels:
        return (1.0 if text == labels[1] else 0.0), ""
    return None, f"answer {text[:60]!r} is neither {labels[0]!r} nor {labels[1]!r} and has no usable logprobs"


def parse_preference(response: Any, labels: tuple[str, str] = ("m", "M")) -> float | None:
    """P(``labels[1]`` = output_2 is better) from a chat-completions response; None if unparsable."""
    return explain_preference(response, labels)[0]


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HTTPJudge:
    """Judge over ``POST {base_url}/chat/completions``.

    Args:
        base_url: API root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``.
        model: the judge model name sent in the request.
        api_key_env: environment variable holding the key (default ``OPENAI_API_KEY``); unset = no
            ``Authorization`` header (local servers).
        config: alpaca_eval annotator config whose prompt and completion settings are used.
        seed: seeds the per-instruction output order.
        timeout: seconds per request; max_retries: retries on network errors, dropped connections, 429
            and 5xx (exponential backoff from 1 s, capped at ``max_backoff``; ``Retry-After`` honoured).
        sleep: the wait function (tests pass a recorder).
        both_orders: ask twice per triple, each answer shown first once, and average (position bias
            cancels; judge-agreement and head-to-head measure the consistency); default one seeded order.
    """

    # Judgements are persisted one at a time: a later failure never loses paid work.
    persist_every = 1

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 config: str = DEFAULT_CONFIG, seed: int = 0, timeout: float = 60.0, max_retries: int = 6,
                 max_backoff: float = 60.0, name: str | None = None, both_orders: bool = False,
                 sleep: Callable[[float], None] = time.sleep, **_: Any):
        if not base_url:
            raise ConfigError("the http judge needs --judge-base-url")
        scheme = urllib.parse.urlparse(base_url).scheme
        if scheme not in ("http", "https"):
            raise ConfigError(f"--judge-base-url {base_url!r}: only http:// and https:// URLs are allowed "
                              f"(got scheme {scheme or 'none'!r})")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ConfigError(f"--judge-timeout must be a positive number of seconds, got {timeout}")
        if max_retries < 0:
            raise ConfigError(f"judge max_retries must be >= 0, got {max_retries}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self.config = model, api_key_env, config
        self.seed, self.timeout, self.max_retries = seed, timeout, max_retries
        self.max_backoff, self._sleep = max_backoff, sleep
        self.both_orders = both_orders
        self.template, kwargs = load_prompt_template(config)
        self.request_kwargs = {k: v for k, v in kwargs.items() if k in ("max_tokens", "temperature", "logprobs",
                                                                          "top_logprobs")}
        self.name = name or f"http:{model}:{config}"

    def _headers(self) -> dict[str, str]:
        import os

        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _attempt(self, data: bytes) -> tuple[Any, bool, str, float | None]:
        """One request: ``(parsed body or None, retryable, failure detail, Retry-After seconds)``."""
        req = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            wait = retry_after_seconds(exc.headers.get("Retry-After") if exc.headers else None)
            return None, exc.code in (408, 409, 429) or exc.code >= 500, f"HTTP {exc.code} from {self.url}", wait
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc or type(exc).__name__
            return None, True, f"{type(exc).__name__} calling {self.url}: {reason}", None
        try:
            return json.loads(raw.decode("utf-8")), False, "", None
        except UnicodeDecodeError as exc:
            return None, True, f"the body from {self.url} is not UTF-8 (byte {exc.start})", None
        except json.JSONDecodeError as exc:
            return None, True, f"the body from {self.url} is not JSON ({exc.msg}: {raw[:60]!r})", None

    def _post(self, body: dict[str, Any]) -> Any:
        data = json.dumps(body).encode("utf-8")
        for attempt in range(self.max_retries + 1):
            parsed, retry, detail, wait = self._attempt(data)
            if not detail:
                return parsed
            if not retry or attempt == self.max_retries:
                tries = f" after {attempt + 1} attempt(s)" if attempt else ""
                raise ConfigError(f"http judge failed{tries}: {detail}; judgements made so far are saved and "
                                  "a rerun continues from there")
            self._sleep(min(wait if wait is not None else 2.0 ** attempt, self.max_backoff))
        raise AssertionError("unreachable")

    def _swap(self, key: Any) -> bool:
        return random.Random(f"{self.seed}:{key}").random() < 0.5

    def _ask(self, instruction: str, o1: str, o2: str) -> tuple[float | None, Any, str]:
        """``(P(output_2 better), raw message, why unparsable)`` for one request with ``o1`` shown first."""
        body = {"model": self.model, "messages": render_messages(self.template, instruction, o1, o2),
                **self.request_kwargs}
        resp = self._post(body)
        p2, why = explain_preference(resp)
        return p2, _message(resp), why

    def _both(self, instruction: str, ref: str, out: str) -> dict[str, Any]:
        """Both orders (Zheng et al. 2023): ``p_output_first`` = P(out better | out shown first),
        ``p_reference_first`` = P(ref better | ref shown first); preference averages the two."""
        p_ref_first_out, raw1, why1 = self._ask(instruction, ref, out)   # P(out better | ref shown first)
        p_out_first_ref, raw2, why2 = self._ask(instruction, out, ref)   # P(ref better | out shown first)
        if p_ref_first_out is None or p_out_first_ref is None:
            pref = None
        else:
            pref = 1.0 + (1.0 - p_out_first_ref + p_ref_first_out) / 2
        row = {"preference": pref, "p_output_first": None if p_out_first_ref is None else 1.0 - p_out_first_ref,
               "p_reference_first": None if p_ref_first_out is None else 1.0 - p_ref_first_out,
               "model_shown_as": "both", "raw_completion": [raw1, raw2]}
        if pref is None:  # a failure a rerun retries
            row.update(retry=True, error=f"unparsable judge answer: {why1 or why2}")
        return row

    def annotate(self, instructions: Sequence[Any], references: Sequence[str], outputs: Sequence[str], *,
                 keys: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        keys = list(keys) if keys is not None else [_flatten(i) for i in instructions]
        rows = []
        for instr, ref, out, key in zip(instructions, references, outputs, keys, strict=True):
            instr = _flatten(instr)
            if identical(out, ref):
                rows.append({"preference": 1.5, "model_shown_as": None, "raw_completion": None})
                continue
            if self.both_orders:
                rows.append(self._both(instr, ref, out))
                continue
            swap = self._swap(key)  # swap: the model's output is output_1 ("m")
            o1, o2 = (out, ref) if swap else (ref, out)
            p2, raw, why = self._ask(instr, o1, o2)
            p_model = None if p2 is None else (1.0 - p2 if swap else p2)
            row = {"preference": None if p_model is None else 1.0 + p_model, "model_shown_as": "m" if swap else "M",
                   "raw_completion": raw}
            if p_model is None:  # a failure a rerun retries, never a finished judgement
                row.update(retry=True, error=f"unparsable judge answer: {why}")
            rows.append(row)
        return rows


def _message(resp: Any) -> Any:
    choices = resp.get("choices") if isinstance(resp, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    return first.get("message") if isinstance(first, dict) else None
