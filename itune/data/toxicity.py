"""The toxicity filter; moved to `itune.data.curate.toxicity`, importable from here too."""

from itune.data.curate.toxicity import INSTALL_HINT, PACKAGE, Toxicity, require_classifier, toxicity_probs

__all__ = ["INSTALL_HINT", "PACKAGE", "Toxicity", "require_classifier", "toxicity_probs"]
