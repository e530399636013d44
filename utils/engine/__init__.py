"""The engine: sequences → one pooled vector per protein on one device, and the Python API over it.

In: a resolved checkpoint (family and architecture, families.py), a device and its limits (limits.py: token budget,
longest one-pass protein), and sequences. Inside: residues → token ids by a checked table (tokens.py), length-sorted
packed batches and windows (batching.py), the family's own forward pass (encoders.py, attention.py; transformers'
forward as reference and fallback in transformers_attention.py), mean pooling over residue rows (pooling.py), a
non-finite check with the fp32 redo (finite.py), all driven by the Encoder (encode.py). Out: per protein a float32
vector (and residue rows on request), in the caller's order: embedder.py's batch loop, used by the workers, and the
`Embedder` class that `from utils import Embedder` gives. Nothing here writes a file.
"""
