"""The length filter: runs after templating, on each row's token counts."""

from __future__ import annotations

from itune.data.curate.base import Action, Filter


class Length(Filter):
    """Drop rows whose token count after templating is outside [min_tokens, max_tokens].

    Runs after templating, on the full (untruncated) length. `data.max_length` still applies afterwards:
    longer rows are dropped or truncated by `data.overlength`, and counted as the `max_length` step.

    Args:
        min_tokens: fewest tokens of the whole example.
        max_tokens: most tokens (None: only `data.max_length`).
        min_trained_tokens: fewest trained tokens (assistant content + end-of-turn).
    """

    stage = "tokens"

    def __init__(
        self, min_tokens: int = 0, max_tokens: int | None = None, min_trained_tokens: int = 1
    ) -> None:
        if max_tokens is not None and max_tokens < min_tokens:
            raise ValueError(f"curate Length: max_tokens={max_tokens} < min_tokens={min_tokens}")
        self.min_tokens, self.max_tokens, self.min_trained_tokens = min_tokens, max_tokens, min_trained_tokens

    def check(self, n_tokens: int, n_trained: int) -> tuple[Action, str]:
        """`drop` with the reason, or `keep`.

        >>> Length(min_tokens=5).check(3, 2)
        ('drop', 'tokens 3 < min_tokens 5')
        """
        if n_tokens < self.min_tokens:
            return "drop", f"tokens {n_tokens} < min_tokens {self.min_tokens}"
        if self.max_tokens is not None and n_tokens > self.max_tokens:
            return "drop", f"tokens {n_tokens} > max_tokens {self.max_tokens}"
        if n_trained < self.min_trained_tokens:
            return "drop", f"trained tokens {n_trained} < min_trained_tokens {self.min_trained_tokens}"
        return "keep", ""
