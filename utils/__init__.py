"""The embedding library behind generate_embeddings_t5.py and validate_t5_embeddings.py.

`from utils import Embedder` gives the Python API (utils/engine/embedder.py). Importing `utils` itself loads nothing
heavy: the scripts read their command line (and answer --help) before torch is imported.

The packages, in the data's order: inputs (config and FASTA) → checks (before anything loads) → running (plan, workers,
chunks, merge; each worker drives the engine) → outputs (files and the run report). Each package's docstring says what
enters it and what leaves; README.md's "How it works" draws the tree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from utils.engine.embedder import Embedder

__all__ = ["Embedder"]


def __getattr__(name: str) -> Any:
    if name == "Embedder":
        # A requirement not installed: one ImportError naming it and the install commands, not a traceback later
        from utils.requirements import ENGINE_REQUIREMENTS, require

        require(ENGINE_REQUIREMENTS)
        from utils.engine.embedder import Embedder

        return Embedder
    raise AttributeError(f"module 'utils' has no attribute {name!r}")
