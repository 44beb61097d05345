"""Curation filters: PII, duplicates, terms, toxicity, decontamination, length; each counted in the audit.

A `curate` config group lists filter nodes by name (`conf/curate/default.yaml`); they run in the order
given, on each row's messages after its format has been applied. Three kinds of filter:

- row filters (`PII`, `Terms`, `Toxicity`, `Decontaminate`) look at one row and keep, redact, flag or drop it;
- set filters (`ExactDedup`, `NearDedup`) compute a key per row; a row whose key was already seen in the
  mixture (earlier source, earlier row: first occurrence wins) is dropped;
- token filters (`Length`) run after templating, on the token counts (always after the others).

One module per family: `base` (the `Filter` base, `Verdict`, the row's text), `pii` and `pii_patterns`,
`dedup`, `terms`, `toxicity`, `decontaminate`, `length`; `chain` builds the configured filters and runs
them on a batch. The filters bind their settings and give them a name; the datamodule records what each
did to each row.
"""

from __future__ import annotations

from itune.data.curate.base import (
    Action,
    Filter,
    Verdict,
    content_hash,
    conversation_text,
    normalise,
    word_ngrams,
)
from itune.data.curate.chain import build_filters, curate_batch
from itune.data.curate.decontaminate import Decontaminate
from itune.data.curate.dedup import MINHASH_SCHEME, ExactDedup, ExactIndex, NearDedup, NearIndex
from itune.data.curate.length import Length
from itune.data.curate.pii import PII, snippet
from itune.data.curate.terms import Terms
from itune.data.curate.toxicity import Toxicity

# A filter is named by the path users give as its `_target_` (the audit records it); its code lives in
# the family's module.
for _cls in (Filter, Verdict, PII, Terms, Toxicity, Decontaminate, ExactDedup, NearDedup, Length):
    _cls.__module__ = __name__

__all__ = [
    "MINHASH_SCHEME",
    "PII",
    "Action",
    "Decontaminate",
    "ExactDedup",
    "ExactIndex",
    "Filter",
    "Length",
    "NearDedup",
    "NearIndex",
    "Terms",
    "Toxicity",
    "Verdict",
    "build_filters",
    "content_hash",
    "conversation_text",
    "curate_batch",
    "normalise",
    "snippet",
    "word_ngrams",
]
