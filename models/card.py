"""A trained model's card as the deploy side reads it: found beside a checkpoint, carried by the export, named
by the daemon.

Why a reader apart from the writer: ``neopain train --final`` writes ``RUN/final/<kind>.pt`` with
``model_card.json`` (+ ``model_card.md``) beside it; ``neopain export`` copies both into the model directory
and its manifest, ``neopain evaluate`` takes the training median from it, and the daemon puts its version and
a one-line summary into health. Those three only need the few keys below, read tolerantly (a card is written by
a newer or older trainer than the code reading it), so a missing optional key never stops a deployment.

Keys read (the writer's contract is in models/training/card.py): ``model_version`` (string, required),
``model_kind``, ``model_config`` (a name or a config dict), ``created_utc``, ``code_version``, ``epochs``,
``checkpoint_sha256`` (the checkpoint file the card describes), ``data`` (``infants``, ``windows``,
``nips_median``: the training windows' median mean-rater NIPS) and ``cv_metrics`` (``mae``, ``icc_a1``, per
kind or flat).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

CARD_JSON = "model_card.json"
CARD_MARKDOWN = "model_card.md"


class CardError(ValueError):
    """A model card that cannot be read or lacks what every card must have."""


def card_name(kind: str, suffix: str = ".json") -> str:
    """``model_card.json`` for the fusion model, ``model_card.<kind>.json`` for a baseline (``.md`` alike).

    Defined here, beside the file names, for both sides: the trainer (``models/training/card.py``) writes
    these names and the readers find them, without the readers importing the trainer."""
    base = CARD_JSON if suffix == ".json" else CARD_MARKDOWN
    return base if kind == "fusion" else base.replace(suffix, f".{kind}{suffix}")


def card_beside(checkpoint: str | Path) -> Path | None:
    """The card of ``RUN/final/<kind>.pt`` in its folder (``model_card.json`` for fusion, ``model_card.<kind>.json``
    for a baseline: :func:`card_name`), or None."""
    checkpoint = Path(checkpoint)
    for name in dict.fromkeys((card_name(checkpoint.stem), CARD_JSON)):
        path = checkpoint.parent / name
        if path.is_file():
            return path
    return None


def card_markdown_path(card_json: str | Path) -> Path:
    """The Markdown twin of a card's JSON file (``model_card[.<kind>].md``)."""
    return Path(card_json).with_suffix(".md")


def read_card(path: str | Path) -> dict[str, Any]:
    """The card as a dict; errors name the file and the problem."""
    path = Path(path)
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CardError(f"cannot read model card {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CardError(f"model card {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(card, dict):
        raise CardError(f"model card {path} must be a JSON object, got {type(card).__name__}")
    version = card.get("model_version")
    if not isinstance(version, str) or not version:
        raise CardError(f"model card {path}: key 'model_version' must be a non-empty string, got {version!r}")
    return card


def _number(value: Any) -> float | None:
    if isinstance(value, Mapping):
        value = value.get("value")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def training_median(card: Mapping[str, Any] | None) -> float | None:
    """The training windows' median mean-rater NIPS (``data.nips_median``), when the card has it."""
    data = (card or {}).get("data")
    return _number(data.get("nips_median")) if isinstance(data, Mapping) else None


def cv_figures(card: Mapping[str, Any]) -> dict[str, float]:
    """``mae`` and ``icc_a1`` of the card's cross-validation metrics (flat, or under the card's kind)."""
    cv = card.get("cv_metrics")
    if not isinstance(cv, Mapping):
        return {}
    kind = card.get("model_kind")
    for block in (cv, cv.get(kind) if isinstance(kind, str) else None, (cv.get("models") or {}).get(kind)
                  if isinstance(kind, str) and isinstance(cv.get("models"), Mapping) else None):
        if isinstance(block, Mapping) and _number(block.get("mae")) is not None:
            out = {"mae": _number(block.get("mae"))}
            if _number(block.get("icc_a1")) is not None:
                out["icc_a1"] = _number(block.get("icc_a1"))
            return out  # type: ignore[return-value]
    return {}


def summary(card: Mapping[str, Any]) -> str:
    """One line for health and logs: version, kind and size, training date and data, CV figures, code."""
    config = card.get("model_config")
    size = config.get("name") if isinstance(config, Mapping) else config
    data = card.get("data") if isinstance(card.get("data"), Mapping) else {}
    trained = " ".join(x for x in (
        "trained",
        str(card["created_utc"])[:10] if card.get("created_utc") else "",
        f"on {data['infants']} infants" if "infants" in data else "",
        f"({data['windows']} windows)" if "windows" in data else "",
    ) if x)
    if card.get("epochs") is not None:
        trained += f", {card['epochs']} epochs"
    parts = [str(card.get("model_version")), " ".join(str(x) for x in (card.get("model_kind"), size) if x),
             trained if trained != "trained" else ""]
    cv = cv_figures(card)
    if cv:
        parts.append("CV " + ", ".join(f"{'MAE' if k == 'mae' else 'ICC(A,1)'} {v:.2f}" for k, v in cv.items()))
    if card.get("code_version"):
        parts.append(f"code {str(card['code_version'])[:40]}")
    return "; ".join(p for p in parts if p)
