"""AlpacaEval metrics from judge annotations (spec online_optimizers.md section 6).

Annotation rows follow alpaca_eval's format: ``output_1``/``generator_1`` = baseline (reference),
``output_2``/``generator_2`` = the evaluated model, ``preference`` in [1, 2] (possibly fractional) with
2 = model preferred; 1.5 is a tie and the legacy value 0 is read as 1.5.

Win rate, standard error, discrete win rate and the counts are computed here with numpy and follow the
definitions of ``alpaca_eval.metrics.winrate.get_winrate`` (v0.6.6), which produced the leaderboard CSVs:

* ``win_rate`` = 100 * mean(pref - 1); ``standard_error`` = 100 * sd(pref - 1, ddof=1) / sqrt(n);
* ``n_wins``: pref > 1.5, ``n_wins_base``: pref < 1.5, ``n_draws``: pref == 1.5 (or legacy 0);
* ``discrete_win_rate`` = 100 * (n_wins + n_draws / 2) / n_total; ``avg_length`` = int(mean characters
  of the model outputs). Rows with a missing (NaN/None) preference are left out of n_total, as upstream.

The length-controlled win rate is *not* re-derived: :func:`length_controlled_winrate` calls the
library's ``alpaca_eval.metrics.glm_winrate.get_length_controlled_winrate`` (GLM ``length_controlled_v1``).
That code reads ``df_gamed.csv`` from the HF dataset ``tatsu-lab/alpaca_eval`` through
``hf_hub_download`` (``instruction_difficulty.csv``, the other hub file, is read by its ``predict_winrate``).
We point those look-ups at a local folder holding both files (argument ``hub_dir`` or the environment
variable ``PREFOPT_ALPACA_EVAL_HUB_DIR``); without them the LC is reported as unavailable, never
approximated.

Results are labelled "AlpacaEval 2.0"/"AlpacaEval 1.0" only when the annotator is the official judge
of that version; anything else is "AlpacaEval-style".
"""
from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from prefopt.core.errors import DataError

HUB_REPO = "tatsu-lab/alpaca_eval"
HUB_FILES: tuple[str, str] = ("df_gamed.csv", "instruction_difficulty.csv")
HUB_DIR_ENV = "PREFOPT_ALPACA_EVAL_HUB_DIR"
#: Official judges (alpaca_eval annotator config names) -> benchmark label.
OFFICIAL_JUDGES: dict[str, str] = {
    "weighted_alpaca_eval_gpt4_turbo": "AlpacaEval 2.0",
    "alpaca_eval_gpt4": "AlpacaEval 1.0",
}
STYLE_LABEL = "AlpacaEval-style"
LC_ENTRY_POINT = "alpaca_eval.metrics.glm_winrate.get_length_controlled_winrate"
_LC_COLUMNS = ("preference", "output_1", "output_2", "generator_1", "generator_2")
_GAMED_COLUMNS = ("model", "index", "preference", "std_delta_len", "instruction_difficulty",
                  "not_gamed_baseline")


def load_annotations(path: str | os.PathLike) -> list[dict]:
    """Read annotations from ``.json`` (array), ``.jsonl`` or ``.jsonl.gz``.

    Raises:
        DataError: unreadable JSON (names the file and line).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        text = fh.read()
    if path.name.endswith((".json", ".json.gz")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e.msg}", file=str(path), line=e.lineno) from None
        if not isinstance(data, list):
            raise DataError("expected a JSON array of annotation objects", file=str(path))
        return data
    rows = []
    for i, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSON: {e.msg}", file=str(path), line=i) from None
    return rows


def _preference(value: Any, line: int) -> float | None:
    """Validated preference in [1, 2]; legacy 0 -> 1.5; None/NaN -> None (left out, as upstream)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"expected a number in [1, 2], got {value!r}", line=line, field="preference")
    x = float(value)
    if math.isnan(x):
        return None
    if x == 0.0:
        return 1.5
    if not 1.0 <= x <= 2.0:
        raise DataError(f"preference must lie in [1, 2] (2 = model preferred), got {x}", line=line,
                        field="preference")
    return x


def win_rate_metrics(preferences: Sequence[Any]) -> dict[str, float | int]:
    """Win rate, standard error, discrete win rate and counts from raw preferences (see module doc).

    Raises:
        DataError: a preference outside [1, 2] (other than legacy 0) or no usable preference at all.
    """
    import numpy as np

    prefs = [_preference(p, i) for i, p in enumerate(preferences, start=1)]
    x = np.array([p for p in prefs if p is not None], dtype=np.float64) - 1.0
    n = int(x.size)
    if n == 0:
        raise DataError("no usable preference (all missing)", field="preference")
    n_wins, n_base = int((x > 0.5).sum()), int((x < 0.5).sum())
    n_draws = n - n_wins - n_base
    se = float(x.std(ddof=1) / math.sqrt(n)) * 100 if n > 1 else float("nan")
    return {
        "win_rate": float(x.mean()) * 100, "standard_error": se, "n_wins": n_wins, "n_wins_base": n_base,
        "n_draws": n_draws, "n_total": n, "discrete_win_rate": (n_wins + n_draws / 2) / n * 100,
        "n_missing": len(prefs) - n,
    }


def benchmark_label(judge: str | None) -> str:
    """"AlpacaEval 2.0"/"AlpacaEval 1.0" for the official judges, otherwise "AlpacaEval-style"."""
    return OFFICIAL_JUDGES.get(judge or "", STYLE_LABEL)


def _unique(rows: Sequence[Mapping[str, Any]], key: str) -> str | None:
    vals = {r.get(key) for r in rows}
    if len(vals) > 1:
        raise DataError(f"annotations mix several values: {sorted(map(str, vals))}", field=key)
    return next(iter(vals)) if vals else None


def resolve_hub_dir(hub_dir: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """Return (folder holding both hub files, '') or (None, message naming both files)."""
    cand = hub_dir if hub_dir is not None else os.environ.get(HUB_DIR_ENV)
    where = f"'{cand}'" if cand else f"no folder given (argument hub_dir or ${HUB_DIR_ENV})"
    if cand:
        missing = [f for f in HUB_FILES if not (Path(cand) / f).is_file()]
        if not missing:
            return Path(cand), ""
        where += f", missing {', '.join(missing)}"
    msg = (f"length-controlled win rate unavailable: it needs {HUB_FILES[0]} and {HUB_FILES[1]} from the "
           f"HF dataset {HUB_REPO}; put both files in one folder and pass hub_dir=... or set "
           f"${HUB_DIR_ENV} ({where})")
    return None, msg


def _import_glm_winrate():
    """Import the library's GLM module.

    alpaca_eval 0.6.6 imports ``pkg_resources`` at package import; it comes from setuptools < 81, which
    the ``eval`` extra pins (``pip install -e .[eval]``).
    """
    import warnings as _w

    with _w.catch_warnings():
        _w.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        from alpaca_eval.metrics import glm_winrate
    return glm_winrate


@contextlib.contextmanager
def _local_hub(glm_winrate, folder: Path):
    """Serve ``hf_hub_download`` calls of the GLM module from ``folder``; never touches the network."""
    original = glm_winrate.hf_hub_download

    def local_download(repo_id: str, filename: str, **_: Any) -> str:
        if repo_id != HUB_REPO or filename not in HUB_FILES:
            raise FileNotFoundError(f"{repo_id}/{filename} is not served from the local folder {folder}")
        return str(folder / filename)

    glm_winrate.hf_hub_download = local_download
    try:
        yield
    finally:
        glm_winrate.hf_hub_download = original


def _check_gamed_file(folder: Path, n_rows: int) -> None:
    import pandas as pd

    path = folder / HUB_FILES[0]
    head = pd.read_csv(path, nrows=0).columns
    missing = [c for c in _GAMED_COLUMNS if c not in head]
    if missing:
        raise DataError(f"missing columns {missing}", file=str(path), field=missing[0])
    n_instr = pd.read_csv(path, usecols=["index"])["index"].nunique()
    if n_instr != n_rows:
        raise DataError(f"covers {n_instr} instructions but there are {n_rows} annotations; the GLM needs the "
                        "annotations of the whole evaluation set in its order", file=str(path), field="index")


def _unavailable(msg: str) -> dict[str, Any]:
    return {"length_controlled_winrate": None, "lc_standard_error": None, "lc_status": "unavailable",
            "lc_message": msg}


def length_controlled_winrate(annotations: Sequence[Mapping[str, Any]], *,
                              hub_dir: str | os.PathLike | None = None,
                              glm_name: str = "length_controlled_v1") -> dict[str, Any]:
    """Length-controlled win rate through ``alpaca_eval``'s GLM (entry point :data:`LC_ENTRY_POINT`).

    ``annotations`` must cover the whole evaluation set in its order (row i = instruction i of the hub
    files). Returns ``length_controlled_winrate`` and ``lc_standard_error`` (both x100), ``lc_status``
    ("ok" | "unavailable") and ``lc_message``. The library's side effects are contained: no weights are
    written to its package folder, the input is not modified, and scikit-learn's global config is restored.

    Raises:
        DataError: a malformed ``df_gamed.csv`` or annotations that do not match its instructions.
    """
    folder, msg = resolve_hub_dir(hub_dir)
    if folder is None:
        return _unavailable(msg)
    _check_gamed_file(folder, len(annotations))
    try:
        glm_winrate = _import_glm_winrate()
    except ImportError as e:
        return _unavailable(f"length-controlled win rate unavailable: the alpaca_eval package could not be "
                            f"imported ({e}); install it with `pip install alpaca-eval==0.6.6`")
    import pandas as pd
    import sklearn

    for i, row in enumerate(annotations, start=1):
        for col in _LC_COLUMNS:
            if col not in row:
                raise DataError("missing (needed by the length-controlled GLM)", line=i, field=col)
    df = pd.DataFrame.from_records([dict(r) for r in annotations]).reset_index(drop=True)
    with _local_hub(glm_winrate, folder), sklearn.config_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.8+ deprecations inside the library
        out = glm_winrate.get_length_controlled_winrate(
            df, glm_name=glm_name, save_weights_dir=None, is_add_glm_preference_inplace=False)
    lc = float(out["length_controlled_winrate"])
    se = out.get("lc_standard_error")
    return {"length_controlled_winrate": lc, "lc_standard_error": None if se is None else float(se),
            "lc_status": "ok", "lc_message": f"{LC_ENTRY_POINT} ({glm_name}), hub files from {folder}"}


def alpacaeval_metrics(annotations: Sequence[Mapping[str, Any]], *, judge: str | None = None,
                       hub_dir: str | os.PathLike | None = None, compute_lc: bool = True,
                       model_outputs: Iterable[str] | None = None) -> dict[str, Any]:
    """All leaderboard metrics of one model from its annotations.

    Args:
        annotations: rows with ``preference`` and ``output_2`` (model output); ``output_1``,
            ``generator_1/2`` and ``annotator`` are used when present.
        judge: annotator name; defaults to the annotations' ``annotator`` field. Decides the label.
        hub_dir: folder with ``df_gamed.csv`` and ``instruction_difficulty.csv`` for the LC win rate.
        compute_lc: skip the GLM when False (``lc_status`` = "skipped").
        model_outputs: texts for ``avg_length`` (default: the annotations' ``output_2``).

    Returns:
        win_rate, standard_error, n_wins, n_wins_base, n_draws, n_total, discrete_win_rate, avg_length,
        length_controlled_winrate, lc_standard_error, lc_status, lc_message, generator, baseline, judge,
        judge_is_official, benchmark.
    """
    annotations = list(annotations)
    out: dict[str, Any] = dict(win_rate_metrics([r.get("preference") for r in annotations]))
    texts = list(model_outputs) if model_outputs is not None else [r.get("output_2") for r in annotations]
    if texts and all(isinstance(t, str) for t in texts):
        out["avg_length"] = int(sum(len(t) for t in texts) / len(texts))
    else:
        out["avg_length"] = None
    judge = judge if judge is not None else _unique(annotations, "annotator")
    out.update(generator=_unique(annotations, "generator_2"), baseline=_unique(annotations, "generator_1"),
               judge=judge, judge_is_official=judge in OFFICIAL_JUDGES, benchmark=benchmark_label(judge))
    if compute_lc:
        out.update(length_controlled_winrate(annotations, hub_dir=hub_dir))
    else:
        out.update(length_controlled_winrate=None, lc_standard_error=None, lc_status="skipped",
                   lc_message="length-controlled win rate not requested")
    return out


def _cell(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def agreement_cell(agr: Mapping[str, Any] | None) -> str:
    """A judge's measured agreement with labelled pairs, ``71.0% [65.2, 76.1] n=300`` (fractions in, % out),
    or ``agreement not measured`` (see ``prefopt eval judge-agreement``)."""
    if not agr or agr.get("agreement") is None:
        return "agreement not measured"
    return (f"{100 * agr['agreement']:.1f}% [{100 * agr['ci_low']:.1f}, {100 * agr['ci_high']:.1f}] "
            f"n={agr['n']}")


def leaderboard_table(results: Mapping[str, Mapping[str, Any]], *, sort_by: str = "win_rate") -> str:
    """Markdown table of several policies (one ``alpacaeval_metrics`` dict each), best first; the last
    column is the judge's measured agreement (``judge_agreement``) or "agreement not measured"."""
    def key(item):
        v = item[1].get(sort_by)
        return -math.inf if v is None else v

    lines = ["| policy | benchmark | LC win rate | win rate | SE | discrete WR | wins/draws/losses | avg len | "
             "judge agreement |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in sorted(results.items(), key=key, reverse=True):
        lc = _cell(r.get("length_controlled_winrate"))
        if r.get("lc_status") == "unavailable":
            lc = "unavailable"
        wdl = f"{r.get('n_wins')}/{r.get('n_draws')}/{r.get('n_wins_base')}"
        lines.append(f"| {name} | {r.get('benchmark', STYLE_LABEL)} | {lc} | {_cell(r.get('win_rate'))} | "
                     f"{_cell(r.get('standard_error'))} | {_cell(r.get('discrete_win_rate'))} | {wdl} | "
                     f"{_cell(r.get('avg_length'))} | {agreement_cell(r.get('judge_agreement'))} |")
    return "\n".join(lines)
