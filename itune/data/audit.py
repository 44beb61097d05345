"""The data audit and the mix manifest: built by the datamodule, written to the run directory here.

Files (rank 0 only, all from `write_audit`):
    audit.json          counts per source and per step (format, each curate filter, max_length,
                        no_trained) with a few PII-redacted examples, token lengths, trained-token shares
                        per source and per role, effective mix shares, checks
    audit.md            the same for people
    audit/length_<source>.png   token-length histogram of each source (after templating)
    manifest.json       the rows of the mixture: [source, row, content hash] in training order, the
                        validation rows, and `mixture_hash` (sha256 of both lists)
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from itune.data.audit_gate import AuditError as AuditError  # raised here; callers catch it from this module
from itune.data.audit_gate import fail_on_steps, raise_for_checks, raise_for_fail_on
from itune.runs.files import AUDIT_JSON, AUDIT_MD, AUDIT_PLOTS_DIR, MANIFEST_FILE

if TYPE_CHECKING:
    from datasets import Dataset
    from omegaconf import DictConfig

    from itune.data.datamodule import InstructDataModule

log = logging.getLogger(__name__)

ACTIONS = ("in", "dropped", "redacted", "flagged", "truncated")
ROLE_SAMPLE = 200  # rows per source whose tokens are attributed to roles


class Recorder:
    """Counts per step, source and action, detail counts and a few examples, as the datamodule goes."""

    def __init__(self, sources: list[str], max_examples: int = 3) -> None:
        self.sources, self.max_examples = sources, max_examples
        self.steps: dict[str, dict[str, Any]] = {}
        self.lengths: dict[str, list[int]] = {}
        self._reserved: Counter[tuple[str, str, str]] = Counter()

    def step(self, name: str, kind: str, target: str, settings: dict[str, Any] | None = None) -> None:
        self.steps[name] = {
            "kind": kind,
            "target": target,
            "settings": settings or {},
            "counts": {s: dict.fromkeys(ACTIONS, 0) for s in self.sources},
            "details": Counter(),
            "examples": {},
        }

    def count(self, step: str, source: str, action: str, n: int) -> None:
        counts = self.steps[step]["counts"][source]
        counts[action] = counts[action] + n if action != "in" else n

    def get(self, step: str, source: str, action: str) -> int:
        return self.steps[step]["counts"][source][action] if step in self.steps else 0

    def detail(self, step: str, detail: str) -> None:
        """Count detail kinds: `email:2,phone:1` adds 2 and 1; `a,b` adds 1 each."""
        for part in filter(None, detail.split(",")):
            kind, _, n = part.partition(":")
            self.steps[step]["details"][kind] += int(n) if n.isdigit() else 1

    def wants_example(self, step: str, action: str, source: str) -> bool:
        """True while the step has fewer than `max_examples` examples of this action from this source."""
        have = sum(e["source"] == source for e in self.steps[step]["examples"].get(action, []))
        return have + self._reserved[(step, action, source)] < self.max_examples

    def reserve(self, step: str, action: str, source: str) -> None:
        self._reserved[(step, action, source)] += 1

    def example(self, step: str, action: str, source: str, row: int, detail: str, text: str) -> None:
        if self._reserved[(step, action, source)]:
            self._reserved[(step, action, source)] -= 1
        examples = self.steps[step]["examples"].setdefault(action, [])
        examples.append({"source": source, "row": int(row), "detail": detail, "text": text})

    def set_lengths(self, source: str, lengths: list[int]) -> None:
        self.lengths[source] = lengths

    def source_summary(self, source: str) -> dict[str, int]:
        return {
            f"{name} {action}": c[action]
            for name, step in self.steps.items()
            for action in ACTIONS[1:]
            if (c := step["counts"][source])[action]
        }


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


def rows_hash(rows: list[list[Any]]) -> str:
    """sha256 of a list of manifest rows, one JSON line each.

    >>> rows_hash([["a", 0, "ff"]])[:12]
    '3a4bfadc5910'
    """
    h = hashlib.sha256()
    for r in rows:
        h.update((json.dumps(r) + "\n").encode())
    return h.hexdigest()


def build_manifest(
    dm: InstructDataModule,
    prepared: list[tuple[Dataset, Dataset]],
    counts: dict[str, int],
    available: dict[str, int],
) -> dict[str, Any]:
    """Which rows went in (source, row index in its file, content hash), in training order, and a hash."""
    names = dm.source_names
    total = sum(counts.values())
    weights = {s.name: s.weight for s in dm.sources}
    wsum = sum(weights.values())

    def listing(ds: Dataset | None) -> list[list[Any]]:
        if ds is None or not len(ds):
            return []
        cols = ds.select_columns(["source", "row", "sha"]).to_dict()
        return [[names[s], r, h] for s, r, h in zip(cols["source"], cols["row"], cols["sha"], strict=True)]

    train, val = listing(dm.train_set), listing(dm.val_set)
    return {
        "mode": "streaming" if dm.streaming else "map",
        "note": (
            f"streaming: rows of the mixture drawn from the first {dm.streaming_audit_rows} rows of each "
            "source (the audit sample); the streamed training order is not listed"
            if dm.streaming
            else "train lists the training mixture in the order of one epoch before the loader's shuffle"
        ),
        "seed": dm.seed,
        "num_samples": dm.num_samples,
        "template_fingerprint": dm.template.fingerprint,
        "sources": {
            s.name: {
                "path": s.path,
                "format": s.format,
                "weight": s.weight,
                "share_by_weight": weights[s.name] / wsum,
                "share_effective": counts[s.name] / total if total else 0.0,
                "rows_available": available[s.name],
                "rows_in_mix": counts[s.name],
                "passes": counts[s.name] / available[s.name] if available[s.name] else 0.0,
                "upsampled": counts[s.name] > available[s.name],
            }
            for s in dm.sources
        },
        "columns": ["source", "row", "sha"],
        "mixture_hash": rows_hash(train + [["--val--", 0, ""]] + val),
        "train": train,
        "val": val,
    }


def build_audit(
    dm: InstructDataModule,
    rec: Recorder,
    prepared: list[tuple[Dataset, Dataset]],
    draws: dict[str, np.ndarray],
    manifest: dict[str, Any],
) -> dict[str, Any]:
    """The whole audit as plain JSON-able data (see the module docstring)."""
    per_source: dict[str, Any] = {}
    role_totals: dict[str, list[float]] = {}
    trained_total = 0
    rng = np.random.default_rng(dm.seed)
    for src, (train, _val) in zip(dm.sources, prepared, strict=True):
        idx = draws[src.name]
        cols = train.select_columns(["n_tokens", "n_trained", "n_eot"]).with_format("numpy")[:]
        length = np.minimum(cols["n_tokens"], dm.max_length) if len(train) else np.zeros(0, np.int64)
        tokens = int(length[idx].sum()) if len(idx) else 0
        trained = int(cols["n_trained"][idx].sum()) if len(idx) else 0
        eot = int(cols["n_eot"][idx].sum()) if len(idx) else 0
        trained_total += trained
        sample = rng.permutation(len(train))[:ROLE_SAMPLE] if len(train) else []
        roles: dict[str, list[int]] = {}
        for msgs in train.select(sample)["messages"] if len(sample) else []:
            for role, (n, t) in dm.template.role_token_counts(msgs).items():
                r = roles.setdefault(role, [0, 0])
                r[0], r[1] = r[0] + n, r[1] + t
        scale = len(idx) / len(sample) if len(sample) else 0.0
        for role, (n, t) in roles.items():
            tot = role_totals.setdefault(role, [0.0, 0.0])
            tot[0], tot[1] = tot[0] + n * scale, tot[1] + t * scale
        m = manifest["sources"][src.name]
        per_source[src.name] = {
            "path": src.path,
            "format": src.format,
            "rows_read": rec.get("format", src.name, "in"),
            "rows_kept": int(dm.stats.get(f"data/{src.name}/rows_train_available", 0))
            + int(dm.stats.get(f"data/{src.name}/rows_val", 0)),
            "rows_val": int(dm.stats.get(f"data/{src.name}/rows_val", 0)),
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
            "length": histogram(rec.lengths.get(src.name, []), dm.max_length),
            "roles_sampled_rows": len(sample),
            "roles": {r: {"tokens": n, "trained": t} for r, (n, t) in sorted(roles.items())},
        }
    for s in per_source.values():
        s["share_of_trained_tokens"] = (
            round(s["trained_tokens_in_mix"] / trained_total, 6) if trained_total else 0.0
        )
    role_tokens = sum(n for n, _ in role_totals.values())
    role_trained = sum(t for _, t in role_totals.values())
    per_role = {
        role: {
            "tokens_est": round(n),
            "trained_est": round(t),
            "share_of_tokens": round(n / role_tokens, 4) if role_tokens else 0.0,
            "share_of_trained_tokens": round(t / role_trained, 4) if role_trained else 0.0,
            "trained_fraction": round(t / n, 4) if n else 0.0,
        }
        for role, (n, t) in sorted(role_totals.items())
    }
    steps = []
    for name, st in rec.steps.items():
        steps.append(
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
        )
    eot_text = dm.template.end_of_turn
    missing = [n for n, s in per_source.items() if s["rows_in_mix"] and not s["end_of_turn_trained"]]
    checks = [
        {
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
    ]
    return {
        "mode": manifest["mode"],
        "note": manifest["note"] if dm.streaming else "",
        "seed": dm.seed,
        "mixture_hash": manifest["mixture_hash"],
        "rows_train": len(manifest["train"]),
        "rows_val": len(manifest["val"]),
        "max_length": dm.max_length,
        "template": {
            "name": dm.template.name,
            "end_of_turn": eot_text,
            "fingerprint": dm.template.fingerprint,
        },
        "sources": per_source,
        "steps": steps,
        "tokens": {"trained_in_mix": trained_total, "per_role": per_role},
        "checks": checks,
        "ok": all(c["ok"] for c in checks),
    }


# ------------------------------------------------------------------------------------------------ markdown
def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out + [""]


def to_markdown(audit: dict[str, Any]) -> str:
    """The audit for people: mixture, steps (per source and filter), examples, tokens, checks."""
    lines = [f"# Data audit ({audit['mode']} mode)", ""]
    if audit["note"]:
        lines += [f"> {audit['note']}", ""]
    lines += [
        f"- seed: {audit['seed']}; mixture hash: `{audit['mixture_hash'][:16]}…` (manifest.json)",
        f"- rows: {audit['rows_train']} train, {audit['rows_val']} validation",
        f"- max_length: {audit['max_length']} tokens",
        f"- template: {audit['template']['name']}, end of turn {audit['template']['end_of_turn']!r}",
        "",
        "## Checks",
        "",
    ]
    lines += [f"- {'PASS' if c['ok'] else 'FAIL'} `{c['name']}`: {c['detail']}" for c in audit["checks"]]
    lines += ["", "## Mixture", ""]
    src = audit["sources"]
    lines += _table(
        [
            "source",
            "read",
            "kept",
            "val",
            "train avail.",
            "in mix",
            "passes",
            "upsampled",
            "weight share",
            "effective",
        ],
        [
            [
                n,
                s["rows_read"],
                s["rows_kept"],
                s["rows_val"],
                s["rows_train_available"],
                s["rows_in_mix"],
                s["passes"],
                "yes" if s["upsampled"] else "no",
                f"{s['share_by_weight']:.3f}",
                f"{s['share_effective']:.3f}",
            ]
            for n, s in src.items()
        ],
    )
    lines += ["## Steps (in order), per source", ""]
    rows = []
    for st in audit["steps"]:
        for n, c in st["counts"].items():
            rows.append(
                [
                    st["name"],
                    st["kind"],
                    n,
                    c["in"],
                    c["dropped"],
                    c["redacted"],
                    c["flagged"],
                    c["truncated"],
                ]
            )
    lines += _table(["step", "kind", "source", "in", "dropped", "redacted", "flagged", "truncated"], rows)
    for st in audit["steps"]:
        if not st["details"] and not st["examples"]:
            continue
        lines += [f"### {st['name']} (`{st['target']}`)", ""]
        if st["details"]:
            lines += ["Found: " + ", ".join(f"{k} × {v}" for k, v in st["details"].items()), ""]
        for action, examples in st["examples"].items():
            for e in examples:
                lines.append(f"- {action}: {e['source']} row {e['row']}: {e['detail']}  ")
                if e["text"]:
                    text = e["text"].replace("`", "'")
                    lines.append(f"  `{text}`")
        lines.append("")
    lines += ["## Tokens per source (in the mixture)", ""]
    lines += _table(
        [
            "source",
            "tokens",
            "trained",
            "trained fraction",
            "share of trained tokens",
            "end-of-turn trained",
            "p50",
            "p95",
            "max",
        ],
        [
            [
                n,
                s["tokens_in_mix"],
                s["trained_tokens_in_mix"],
                s["trained_fraction"],
                f"{s['share_of_trained_tokens']:.3f}",
                s["end_of_turn_trained"],
                s["length"]["p50"],
                s["length"]["p95"],
                s["length"]["max"],
            ]
            for n, s in src.items()
        ],
    )
    lines += [
        "## Tokens per role (estimated from a sample of each source, weighted by its rows in the mix)",
        "",
    ]
    lines += _table(
        ["role", "tokens", "trained", "trained fraction", "share of tokens", "share of trained"],
        [
            [
                r,
                v["tokens_est"],
                v["trained_est"],
                v["trained_fraction"],
                v["share_of_tokens"],
                v["share_of_trained_tokens"],
            ]
            for r, v in audit["tokens"]["per_role"].items()
        ],
    )
    lines += ["## Token lengths after templating", ""]
    lines += [f"![{n}]({AUDIT_PLOTS_DIR}/length_{n}.png)" for n in src] + [""]
    return "\n".join(lines)


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


def write_audit(run_dir: str | Path, datamodule: InstructDataModule, check: bool = True) -> list[Path]:
    """Write audit.json, audit.md, the length histograms and manifest.json (rank 0), then run the checks.

    Call after `datamodule.setup("fit")`. Raises AuditError (on every rank) when a check fails.
    """
    from lightning.pytorch.utilities import rank_zero_only

    audit, manifest = datamodule.audit, datamodule.manifest
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
