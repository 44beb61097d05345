"""The data audit: built from the pipeline's `PreparedMix` value, written to the run directory here.

Files (rank 0 only, all from `write_audit`):
    audit.json          counts per source and per step (format, each curate filter, max_length,
                        no_trained) with a few PII-redacted examples, token lengths, trained-token shares
                        per source and per role, effective mix shares, checks
    audit.md            the same for people (itune/data/audit_markdown.py)
    audit/length_<source>.png   token-length histogram of each source (after templating)
    manifest.json       the rows of the mixture (itune/data/manifest.py)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from itune.data.audit_gate import AuditError as AuditError  # raised here; callers catch it from this module
from itune.data.audit_gate import fail_on_steps, raise_for_checks, raise_for_fail_on
from itune.data.audit_markdown import to_markdown as to_markdown  # audit.md
from itune.data.records import ACTIONS
from itune.runs.files import AUDIT_JSON, AUDIT_MD, AUDIT_PLOTS_DIR, MANIFEST_FILE

if TYPE_CHECKING:
    from datasets import Dataset
    from omegaconf import DictConfig

    from itune.data.pipeline import PreparedMix
    from itune.data.templates import Template

log = logging.getLogger(__name__)

ROLE_SAMPLE = 200  # rows per source whose tokens are attributed to roles


class Audited(Protocol):
    """What `write_audit` writes: an audit and a manifest (an InstructDataModule after `setup` has both)."""

    @property
    def audit(self) -> dict[str, Any]: ...

    @property
    def manifest(self) -> dict[str, Any]: ...


def histogram(lengths: list[int], max_length: int, bins: int = 30) -> dict[str, Any]:
    """Bin edges/counts and percentiles of token lengths.

    >>> histogram([1, 2, 3, 10], 10, bins=2)["counts"]
    [3, 1]
    """
    a = np.asarray(lengths, dtype=np.int64)
    if not len(a):
        return {"edges": [], "counts": [], "p50": 0, "p95": 0, "max": 0, "over_max_length": 0}
    counts, edges = np.histogram(a, bins=bins, range=(0, max(int(a.max()), max_length)))
    return {
        "edges": [round(float(e), 1) for e in edges],
        "counts": counts.tolist(),
        "p50": int(np.percentile(a, 50)),
        "p95": int(np.percentile(a, 95)),
        "max": int(a.max()),
        "over_max_length": int((a > max_length).sum()),
    }


def role_tokens(
    template: Template, train: Dataset, rng: np.random.Generator
) -> tuple[int, dict[str, list[int]]]:
    """(rows sampled, {role: [tokens, trained tokens]}) of up to ROLE_SAMPLE rows of a source."""
    sample = rng.permutation(len(train))[:ROLE_SAMPLE] if len(train) else []
    roles: dict[str, list[int]] = {}
    for msgs in train.select(sample)["messages"] if len(sample) else []:
        for role, (n, t) in template.role_token_counts(msgs).items():
            r = roles.setdefault(role, [0, 0])
            r[0], r[1] = r[0] + n, r[1] + t
    return len(sample), roles


def source_entry(prepared: PreparedMix, i: int, rng: np.random.Generator) -> tuple[dict[str, Any], dict]:
    """The audit of source `i` and its (scaled) {role: [tokens, trained]} in the mixture."""
    src, (train, _val) = prepared.sources[i], prepared.parts[i]
    max_length, stats, rec = prepared.recipe.max_length, prepared.stats, prepared.record
    idx = prepared.draws[src.name]
    cols = train.select_columns(["n_tokens", "n_trained", "n_eot"]).with_format("numpy")[:]
    length = np.minimum(cols["n_tokens"], max_length) if len(train) else np.zeros(0, np.int64)
    tokens = int(length[idx].sum()) if len(idx) else 0
    trained = int(cols["n_trained"][idx].sum()) if len(idx) else 0
    eot = int(cols["n_eot"][idx].sum()) if len(idx) else 0
    sampled, roles = role_tokens(prepared.recipe.template, train, rng)
    scale = len(idx) / sampled if sampled else 0.0
    m = prepared.manifest["sources"][src.name]
    n_val = int(stats.get(f"data/{src.name}/rows_val", 0))
    entry = {
        "path": src.path,
        "format": src.format,
        "rows_read": rec.get("format", src.name, "in"),
        "rows_kept": int(stats.get(f"data/{src.name}/rows_train_available", 0)) + n_val,
        "rows_val": n_val,
        "rows_train_available": m["rows_available"],
        "rows_in_mix": m["rows_in_mix"],
        "passes": round(m["passes"], 4),
        "upsampled": m["upsampled"],
        "share_by_weight": round(m["share_by_weight"], 6),
        "share_effective": round(m["share_effective"], 6),
        "tokens_in_mix": tokens,
        "trained_tokens_in_mix": trained,
        "trained_fraction": round(trained / tokens, 4) if tokens else 0.0,
        "end_of_turn_trained": eot,
        "length": histogram(rec.lengths.get(src.name, []), max_length),
        "roles_sampled_rows": sampled,
        "roles": {r: {"tokens": n, "trained": t} for r, (n, t) in sorted(roles.items())},
    }
    return entry, {role: [n * scale, t * scale] for role, (n, t) in roles.items()}


def per_role(role_totals: dict[str, list[float]]) -> dict[str, Any]:
    """Estimated tokens and trained tokens per role in the mixture, and their shares."""
    role_tokens = sum(n for n, _ in role_totals.values())
    role_trained = sum(t for _, t in role_totals.values())
    return {
        role: {
            "tokens_est": round(n),
            "trained_est": round(t),
            "share_of_tokens": round(n / role_tokens, 4) if role_tokens else 0.0,
            "share_of_trained_tokens": round(t / role_trained, 4) if role_trained else 0.0,
            "trained_fraction": round(t / n, 4) if n else 0.0,
        }
        for role, (n, t) in sorted(role_totals.items())
    }


def eot_check(per_source: dict[str, Any], eot_text: str) -> dict[str, Any]:
    """Passes when every source in the mixture trains the end-of-turn token at least once."""
    missing = [n for n, s in per_source.items() if s["rows_in_mix"] and not s["end_of_turn_trained"]]
    return {
        "name": "end_of_turn_trained",
        "ok": not missing,
        "detail": (
            f"the end-of-turn token {eot_text!r} is trained "
            + ", ".join(f"{n}: {s['end_of_turn_trained']}x" for n, s in per_source.items())
            if not missing
            else f"the end-of-turn token {eot_text!r} is never trained in source(s) {missing}: the model "
            "would not learn to stop. Check the template (template.roles.assistant.suffix) and "
            "data.max_length/data.overlength (truncation cuts it off)."
        ),
    }


def build_audit(prepared: PreparedMix) -> dict[str, Any]:
    """The whole audit of a prepared mixture as plain JSON-able data (see the module docstring)."""
    recipe, manifest = prepared.recipe, prepared.manifest
    per_source: dict[str, Any] = {}
    role_totals: dict[str, list[float]] = {}
    rng = np.random.default_rng(recipe.seed)
    for i, src in enumerate(prepared.sources):
        per_source[src.name], roles = source_entry(prepared, i, rng)
        for role, (n, t) in roles.items():
            tot = role_totals.setdefault(role, [0.0, 0.0])
            tot[0], tot[1] = tot[0] + n, tot[1] + t
    trained_total = sum(s["trained_tokens_in_mix"] for s in per_source.values())
    for s in per_source.values():
        s["share_of_trained_tokens"] = (
            round(s["trained_tokens_in_mix"] / trained_total, 6) if trained_total else 0.0
        )
    steps = [
        {
            "name": name,
            "kind": st["kind"],
            "target": st["target"],
            "settings": st["settings"],
            "counts": st["counts"],
            "totals": {a: sum(c[a] for c in st["counts"].values()) for a in ACTIONS[1:]},
            "details": dict(st["details"].most_common()),
            "examples": st["examples"],
        }
        for name, st in prepared.record.steps.items()
    ]
    template = recipe.template
    checks = [eot_check(per_source, template.end_of_turn)]
    return {
        "mode": manifest["mode"],
        "note": manifest["note"] if prepared.streaming else "",
        "seed": recipe.seed,
        "mixture_hash": manifest["mixture_hash"],
        "rows_train": len(manifest["train"]),
        "rows_val": len(manifest["val"]),
        "max_length": recipe.max_length,
        "template": {
            "name": template.name,
            "end_of_turn": template.end_of_turn,
            "fingerprint": template.fingerprint,
        },
        "sources": per_source,
        "steps": steps,
        "tokens": {"trained_in_mix": trained_total, "per_role": per_role(role_totals)},
        "checks": checks,
        "ok": all(c["ok"] for c in checks),
    }


def _plot(path: Path, name: str, hist: dict[str, Any], max_length: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    if hist["counts"]:
        edges = hist["edges"]
        ax.bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge", color="#4477aa")
    ax.axvline(max_length, color="#cc3311", linestyle="--", label=f"max_length {max_length}")
    ax.set_title(f"{name}: tokens per example (p50 {hist['p50']}, p95 {hist['p95']})")
    ax.set_xlabel("tokens after templating")
    ax.set_ylabel("rows")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_audit(run_dir: str | Path, data: Audited, check: bool = True) -> list[Path]:
    """Write audit.json, audit.md, the length histograms and manifest.json (rank 0), then run the checks.

    `data`: what holds the audit and the manifest (the datamodule after `setup("fit")`). Raises
    AuditError (on every rank) when a check fails.
    """
    from lightning.pytorch.utilities import rank_zero_only

    audit, manifest = data.audit, data.manifest
    written: list[Path] = []
    if rank_zero_only.rank == 0 and audit:
        run_dir = Path(run_dir)
        (run_dir / AUDIT_PLOTS_DIR).mkdir(parents=True, exist_ok=True)
        for name, s in audit["sources"].items():
            _plot(run_dir / AUDIT_PLOTS_DIR / f"length_{name}.png", name, s["length"], audit["max_length"])
            written.append(run_dir / AUDIT_PLOTS_DIR / f"length_{name}.png")
        for fname, payload in ((AUDIT_JSON, audit), (MANIFEST_FILE, manifest)):
            (run_dir / fname).write_text(
                json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
            )
            written.append(run_dir / fname)
        (run_dir / AUDIT_MD).write_text(to_markdown(audit), encoding="utf-8")
        written.append(run_dir / AUDIT_MD)
        log.info("data audit: %s (mixture hash %s)", run_dir / AUDIT_MD, audit["mixture_hash"][:16])
    if check:
        raise_for_checks(audit)
    return written


def run_audit(cfg: DictConfig) -> dict[str, Any]:
    """Compose the data pipeline of a config (tokenizer, template, data, curate) and write the audit only.

    Returns the audit. Raises AuditError, after writing the report, when a check fails or a step named in
    `cfg.fail_on` dropped, redacted, flagged or truncated any row; ValueError for an unknown `fail_on` name
    (before reading any data).
    """
    from itune.config_schema import check_group_keys

    check_group_keys(cfg)  # a misspelt model/eval key fails before anything loads
    from hydra.utils import instantiate

    fail_on = fail_on_steps(cfg.get("fail_on"), cfg.data.get("curate"))
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = instantiate(cfg.model.tokenizer)
    template = instantiate(cfg.template, tokenizer=tokenizer)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer, template=template)
    datamodule.setup("fit")
    write_audit(run_dir, datamodule, check=False)
    audit = datamodule.audit
    for st in audit["steps"]:
        t = st["totals"]
        if any(t.values()):
            log.info("%-14s %s", st["name"], ", ".join(f"{k} {v}" for k, v in t.items() if v))
    raise_for_checks(audit)
    raise_for_fail_on(audit, fail_on)
    return audit
