"""Tiny random-weight protein language model checkpoints in the real hub on-disk layout.

Each ``build_*`` function writes a directory that the project's normal loading code
(``AutoConfig`` / ``AutoTokenizer.from_pretrained(dir)``, ``T5EncoderModel``, ``EsmModel``,
``EsmcModel`` ...) loads unchanged.  Only the *sizes* and the *weights* are fake:

* architecture class, ``model_type`` and every non-size config field follow the real hub
  ``config.json`` of the checkpoint being imitated;
* tokenizer files, token ids and special tokens are those of the real hub repository;
* weights are random but seeded, hence byte-for-byte reproducible, and stored as
  ``model.safetensors`` by ``save_pretrained`` in the dtype of the real checkpoint.

Imitated repositories (see ``_REAL_*`` below for the config fields taken from them):

========  =====================================  =============================  =======
key       hub repository                         saved from                     dtype
========  =====================================  =============================  =======
prot_t5   Rostlab/prot_t5_xl_half_uniref50-enc   T5EncoderModel (encoder only)  float16
prost_t5  Rostlab/ProstT5_fp16                   T5ForConditionalGeneration     float16
esm2      facebook/esm2_t*_UR50D (e.g. t6_8M)    EsmForMaskedLM                 float32
esm1b     facebook/esm1b_t33_650M_UR50S          EsmForMaskedLM                 float32
esmc      biohub/ESMC-* (transformers "esmc")    EsmcForMaskedLM                float32
========  =====================================  =============================  =======

Usage::

    python -m tests.tiny_checkpoints DIR     # builds all five into DIR/<key>, prints "key path"

Real sizes: every builder takes ``sizes`` (config fields that replace the tiny ones, e.g. ``REAL_SIZES["esm2_3b"]``)
and ``device`` (where the random weights are created: on a GPU a multi-billion-parameter model takes seconds, on the
CPU minutes); the benchmarks build real-shape checkpoints this way, with the same tokenizer files.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "PROT_T5_RESIDUES",
    "PROST_T5_3DI",
    "ESM_VOCAB",
    "build_prot_t5",
    "build_prost_t5",
    "build_esm2",
    "build_esm1b",
    "build_esmc",
    "build_all",
    "BUILDERS",
    "REAL_SIZES",
]

# ---------------------------------------------------------------------------------------------
# Vocabularies (these are the real ones; the golden ids in tests/test_tiny_checkpoints.py and the
# project's own tests rely on them).
# ---------------------------------------------------------------------------------------------

#: ProtT5 / ProstT5 SentencePiece residue pieces, stored as "▁A" ... in spiece.model, ids 3..27
#: (after <pad>=0, </s>=1, <unk>=2).  <extra_id_99..0> then fill ids 28..127.
PROT_T5_RESIDUES = "A L G V S R E D T I P K F Q N Y M H W C X B O U Z".split()

#: ProstT5 3Di letters, added tokens with ids 128..147 (real added_tokens.json of ProstT5_fp16);
#: they are the 20 standard residues of PROT_T5_RESIDUES in the same order, lower-cased.
PROST_T5_3DI = [r.lower() for r in PROT_T5_RESIDUES[:20]]
PROST_T5_FOLD2AA_ID = 148
PROST_T5_AA2FOLD_ID = 149

#: The 33-token ESM-1b / ESM-2 vocab.txt.
ESM_VOCAB = [
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H",
    "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
]  # fmt: skip

_SPM_MARKER = "\u2581"  # "▁", SentencePiece's whitespace / word-boundary meta symbol
_T5_EXTRA_IDS = 100
_MODEL_MAX_LENGTH_UNSET = int(1e30)  # 1000000000000000019884624838656, as written by transformers

# ---------------------------------------------------------------------------------------------
# Real hub config.json contents (non-size fields are kept, sizes are replaced by _TINY_* values).
# ---------------------------------------------------------------------------------------------

# huggingface.co/Rostlab/prot_t5_xl_half_uniref50-enc/blob/main/config.json
_REAL_PROT_T5 = {
    "architectures": ["T5EncoderModel"],
    "d_ff": 16384,
    "d_kv": 128,
    "d_model": 1024,
    "decoder_start_token_id": 0,
    "dropout_rate": 0.1,
    "eos_token_id": 1,
    "feed_forward_proj": "relu",
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "t5",
    "n_positions": 512,
    "num_decoder_layers": 24,
    "num_heads": 32,
    "num_layers": 24,
    "output_past": True,
    "pad_token_id": 0,
    "relative_attention_num_buckets": 32,
    "torch_dtype": "float16",
    "use_cache": True,
    "vocab_size": 128,
}

# huggingface.co/Rostlab/ProstT5_fp16/blob/main/config.json
_REAL_PROST_T5 = {
    "architectures": ["T5ForConditionalGeneration"],
    "d_ff": 16384,
    "d_kv": 128,
    "d_model": 1024,
    "decoder_start_token_id": 0,
    "dense_act_fn": "relu",
    "dropout_rate": 0.1,
    "eos_token_id": 1,
    "feed_forward_proj": "relu",
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "is_gated_act": False,
    "layer_norm_epsilon": 1e-06,
    "model_type": "t5",
    "n_positions": 512,
    "num_decoder_layers": 24,
    "num_heads": 32,
    "num_layers": 24,
    "output_past": True,
    "pad_token_id": 0,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "torch_dtype": "float16",
    "use_cache": True,
    "vocab_size": 150,
}

_TINY_T5 = {
    "d_model": 32,
    "d_kv": 8,
    "num_heads": 4,
    "d_ff": 64,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
}

# huggingface.co/facebook/esm2_t6_8M_UR50D/blob/main/config.json (all ESM-2 sizes share these)
_REAL_ESM2 = {
    "architectures": ["EsmForMaskedLM"],
    "attention_probs_dropout_prob": 0.0,
    "classifier_dropout": None,
    "emb_layer_norm_before": False,
    "esmfold_config": None,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "hidden_size": 320,
    "initializer_range": 0.02,
    "intermediate_size": 1280,
    "is_folding_model": False,
    "layer_norm_eps": 1e-05,
    "mask_token_id": 32,
    "max_position_embeddings": 1026,
    "model_type": "esm",
    "num_attention_heads": 20,
    "num_hidden_layers": 6,
    "pad_token_id": 1,
    "position_embedding_type": "rotary",
    "token_dropout": True,
    "torch_dtype": "float32",
    "use_cache": True,
    "vocab_list": None,
    "vocab_size": 33,
}

# facebook/esm1b_t33_650M_UR50S config.json
_REAL_ESM1B = {
    **_REAL_ESM2,
    "emb_layer_norm_before": True,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 33,
    "position_embedding_type": "absolute",
}

_TINY_ESM = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}

# transformers.models.esmc.EsmcConfig defaults (the biohub/ESMC-* configs are not mirrored in this
# environment; the layer and vocabulary layout is taken from the native esmc package).
_TINY_ESMC = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}

_T5_SIZE_KEYS = ("d_model", "d_kv", "num_heads", "d_ff", "num_layers", "num_decoder_layers")

#: Size fields of real checkpoints, for ``sizes=``: the hub config.json values (ESM2 650M and 3B: facebook/
#: esm2_t33_650M_UR50D, esm2_t36_3B_UR50D; ESM C 600M: d_model 1152, 36 layers, 18 heads, SwiGLU width
#: 8/3 × 1152 rounded up to 256 = 3072).
REAL_SIZES: dict[str, dict] = {
    "prot_t5_xl": {k: _REAL_PROT_T5[k] for k in _T5_SIZE_KEYS},
    "prost_t5": {k: _REAL_PROST_T5[k] for k in _T5_SIZE_KEYS},
    "esm2_650m": {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 33, "num_attention_heads": 20},
    "esm2_3b": {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 36, "num_attention_heads": 40},
    "esm1b": {k: _REAL_ESM1B[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers")}
    | {"num_attention_heads": 20},
    "esmc_600m": {"hidden_size": 1152, "intermediate_size": 3072, "num_hidden_layers": 36, "num_attention_heads": 18},
}

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _write_json(path: Path, obj: object, *, pretty: bool) -> None:
    """Write JSON the way the transformers version that produced the hub file did."""
    if pretty:  # transformers >= 4.2x: indent=2, sorted keys, trailing newline
        text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    else:  # transformers 4.1x: one line
        text = json.dumps(obj, ensure_ascii=False)
    path.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch for model construction without disturbing the caller's global RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def _poison(weight) -> None:
    """Fill a weight tensor with NaN in place (every output of the layer becomes NaN)."""
    import torch

    with torch.no_grad():
        weight.fill_(float("nan"))


def _patch_config_json(out_dir: Path, fields: dict) -> None:
    path = out_dir / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(fields)
    _write_json(path, config, pretty=True)


def _prepare(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


@functools.lru_cache(maxsize=1)
def _nmt_nfkc_normalizer_spec() -> bytes:
    """The default SentencePiece normalizer (rule "nmt_nfkc"), including its precompiled charsmap.

    The real ProtT5 spiece.model (238 kB for 28 pieces) carries this ~240 kB charsmap.  It is
    compiled into the sentencepiece library and only exported through a trained model, so a
    throw-away character model is trained (a few ms) and only its ``normalizer_spec`` is kept; the
    pieces of our models are written directly.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["A B C D E"] * 4),
        model_writer=buffer,
        model_type="char",
        vocab_size=8,
        hard_vocab_limit=False,
        normalization_rule_name="nmt_nfkc",
        minloglevel=2,
    )
    proto = spm_pb2.ModelProto()
    proto.ParseFromString(buffer.getvalue())
    return proto.normalizer_spec.SerializeToString()


def _prot_t5_spiece_model(*, broken: bool = False) -> bytes:
    """Serialized spiece.model of ProtT5 / ProstT5: <pad>, </s>, <unk>, then one piece per residue.

    Real pieces are "▁A", "▁L", ... (the leading U+2581 is SentencePiece's word-boundary marker), so
    the space-separated model text "M K T" -> "▁M▁K▁T" -> ["▁M", "▁K", "▁T"] -> [19, 14, 11].

    ``broken=True`` writes the pieces without that convention: the boundary is a plain ASCII space
    (" A", " L", ...).  Input whitespace is always escaped to "▁" before matching, so no residue word
    ("▁M") matches any piece and every residue becomes <unk> (id 2); all other ids are unchanged.
    """
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2

    piece_type = spm_pb2.ModelProto.SentencePiece
    proto = spm_pb2.ModelProto()
    for text, kind in (("<pad>", piece_type.CONTROL), ("</s>", piece_type.CONTROL), ("<unk>", piece_type.UNKNOWN)):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = text, 0.0, kind
    boundary = " " if broken else _SPM_MARKER
    for rank, residue in enumerate(PROT_T5_RESIDUES):
        piece = proto.pieces.add()
        # scores decrease with frequency rank, as in a trained unigram model
        piece.piece, piece.score, piece.type = boundary + residue, -float(rank + 1), piece_type.NORMAL

    trainer = proto.trainer_spec
    trainer.model_type = spm_pb2.TrainerSpec.UNIGRAM
    trainer.vocab_size = len(proto.pieces)
    trainer.character_coverage = 1.0
    trainer.pad_id, trainer.eos_id, trainer.unk_id, trainer.bos_id = 0, 1, 2, -1
    trainer.pad_piece, trainer.eos_piece, trainer.unk_piece = "<pad>", "</s>", "<unk>"
    proto.normalizer_spec.ParseFromString(_nmt_nfkc_normalizer_spec())
    return proto.SerializeToString()


def _new_model(model_class, config, dtype, sizes: dict | None, device: str):
    """The model with random weights, in the dtype it is saved in.

    Tiny (no ``sizes``): built in fp32 on the CPU and cast, as always, so the bytes stay reproducible. Real sizes:
    created on ``device`` directly in ``dtype`` (T5's ``wo`` is cast afterwards: transformers keeps it in fp32).
    """
    import torch

    if sizes is None:
        return model_class(config).eval().to(dtype)
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype)
    return model.to(dtype).eval()


def _extra_ids() -> list[str]:
    return [f"<extra_id_{i}>" for i in range(_T5_EXTRA_IDS)]


def _t5_config(real: dict, vocab_size: int, sizes: dict | None):
    from transformers import T5Config

    fields = {k: v for k, v in real.items() if k not in ("architectures", "model_type", "torch_dtype")}
    fields.update(_TINY_T5)
    fields.update(sizes or {})
    fields["vocab_size"] = vocab_size
    return T5Config(**fields)


def _esm_config(real: dict, sizes: dict | None):
    from transformers import EsmConfig

    fields = {k: v for k, v in real.items() if k not in ("architectures", "model_type", "torch_dtype")}
    fields.update(_TINY_ESM)
    fields.update(sizes or {})
    return EsmConfig(**fields)


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------


def build_prot_t5(
    out_dir: Path,
    *,
    seed: int = 0,
    nan_weights: bool = False,
    broken_tokenizer: bool = False,
    sizes: dict | None = None,
    device: str = "cpu",
) -> Path:
    """Tiny Rostlab/prot_t5_xl_half_uniref50-enc: encoder-only ``T5EncoderModel`` in float16.

    Files: config.json, model.safetensors, spiece.model, special_tokens_map.json,
    tokenizer_config.json (``{"do_lower_case": false}``; AutoTokenizer resolves T5Tokenizer from
    the config's model_type "t5", exactly as for the hub repository).
    """
    import torch
    from transformers import T5EncoderModel

    out_dir = _prepare(out_dir)
    config = _t5_config(_REAL_PROT_T5, vocab_size=128, sizes=sizes)
    with _seeded(seed), _quiet_transformers():
        model = _new_model(T5EncoderModel, config, torch.float16, sizes, device)
        if nan_weights:
            _poison(model.encoder.block[-1].layer[-1].DenseReluDense.wo.weight)
        model.save_pretrained(out_dir, safe_serialization=True)
    # T5EncoderModel.__init__ flips is_encoder_decoder/use_cache to False on the config object it is
    # given, but the hub config.json keeps the T5Config values (true/true): restore them.
    _patch_config_json(out_dir, {k: _REAL_PROT_T5[k] for k in ("is_encoder_decoder", "use_cache")})

    (out_dir / "spiece.model").write_bytes(_prot_t5_spiece_model(broken=broken_tokenizer))
    # the hub files were written by transformers 4.17: one-line JSON
    _write_json(
        out_dir / "special_tokens_map.json",
        {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "additional_special_tokens": _extra_ids()},
        pretty=False,
    )
    (out_dir / "tokenizer_config.json").write_text('{"do_lower_case": false}\n', encoding="utf-8")
    return out_dir


def build_prost_t5(
    out_dir: Path, *, seed: int = 1, nan_weights: bool = False, sizes: dict | None = None, device: str = "cpu"
) -> Path:
    """Tiny Rostlab/ProstT5_fp16: full ``T5ForConditionalGeneration`` (encoder + decoder) in float16.

    Tokenizer = ProtT5's spiece.model (ids 0..127) plus the real added_tokens.json: 3Di letters
    a l g v s r e d t i p k f q n y m h w c -> 128..147, "<fold2AA>" -> 148, "<AA2fold>" -> 149.  As in
    the hub repository these are plain added tokens (not in special_tokens_map.json), so they are
    *not* flagged by ``special_tokens_mask`` / removed by ``skip_special_tokens``.
    ``T5EncoderModel.from_pretrained(dir)`` loads the encoder and drops the decoder.
    """
    import torch
    from transformers import T5ForConditionalGeneration

    out_dir = _prepare(out_dir)
    config = _t5_config(_REAL_PROST_T5, vocab_size=150, sizes=sizes)
    with _seeded(seed), _quiet_transformers():
        model = _new_model(T5ForConditionalGeneration, config, torch.float16, sizes, device)
        if nan_weights:
            _poison(model.encoder.block[-1].layer[-1].DenseReluDense.wo.weight)
        model.save_pretrained(out_dir, safe_serialization=True)

    (out_dir / "spiece.model").write_bytes(_prot_t5_spiece_model())
    added = {token: 128 + i for i, token in enumerate(PROST_T5_3DI)}
    added["<fold2AA>"] = PROST_T5_FOLD2AA_ID
    added["<AA2fold>"] = PROST_T5_AA2FOLD_ID
    _write_json(out_dir / "added_tokens.json", added, pretty=True)
    # the hub files were written by transformers 4.29: indented, sorted JSON
    _write_json(
        out_dir / "special_tokens_map.json",
        {"additional_special_tokens": _extra_ids(), "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
        pretty=True,
    )
    _write_json(
        out_dir / "tokenizer_config.json",
        {
            "additional_special_tokens": _extra_ids(),
            "clean_up_tokenization_spaces": True,
            "do_lower_case": False,
            "eos_token": "</s>",
            "extra_ids": _T5_EXTRA_IDS,
            "model_max_length": _MODEL_MAX_LENGTH_UNSET,
            "pad_token": "<pad>",
            "sp_model_kwargs": {},
            "tokenizer_class": "T5Tokenizer",
            "unk_token": "<unk>",
        },
        pretty=True,
    )
    return out_dir


def _write_esm_tokenizer(out_dir: Path) -> None:
    # vocab.txt as EsmTokenizer.save_vocabulary writes it (no trailing newline)
    (out_dir / "vocab.txt").write_text("\n".join(ESM_VOCAB), encoding="utf-8")
    _write_json(
        out_dir / "special_tokens_map.json",
        {
            "cls_token": "<cls>",
            "eos_token": "<eos>",
            "mask_token": "<mask>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
        },
        pretty=True,
    )
    _write_json(
        out_dir / "tokenizer_config.json",
        {"model_max_length": _MODEL_MAX_LENGTH_UNSET, "tokenizer_class": "EsmTokenizer"},
        pretty=True,
    )


def _build_esm(out_dir: Path, real: dict, seed: int, nan_weights: bool, sizes: dict | None, device: str) -> Path:
    import torch
    from transformers import EsmForMaskedLM

    out_dir = _prepare(out_dir)
    config = _esm_config(real, sizes)
    with _seeded(seed), _quiet_transformers():
        model = _new_model(EsmForMaskedLM, config, torch.float32, sizes, device)
        if nan_weights:
            _poison(model.esm.encoder.layer[-1].output.dense.weight)
        model.save_pretrained(out_dir, safe_serialization=True)
    _write_esm_tokenizer(out_dir)
    return out_dir


def build_esm2(
    out_dir: Path, *, seed: int = 2, nan_weights: bool = False, sizes: dict | None = None, device: str = "cpu"
) -> Path:
    """Tiny ESM-2 (facebook/esm2_t*_UR50D): ``EsmForMaskedLM``, rotary positions, float32."""
    return _build_esm(out_dir, _REAL_ESM2, seed, nan_weights, sizes, device)


def build_esm1b(
    out_dir: Path, *, seed: int = 3, nan_weights: bool = False, sizes: dict | None = None, device: str = "cpu"
) -> Path:
    """Tiny facebook/esm1b_t33_650M_UR50S: ``EsmForMaskedLM``, learned absolute positions
    (max_position_embeddings 1026 -> at most 1022 residues + <cls> + <eos>), float32."""
    return _build_esm(out_dir, _REAL_ESM1B, seed, nan_weights, sizes, device)


def build_esmc(
    out_dir: Path, *, seed: int = 4, nan_weights: bool = False, sizes: dict | None = None, device: str = "cpu"
) -> Path:
    """Tiny ESM C (biohub/ESMC-*) for the native ``transformers.models.esmc``: ``EsmcForMaskedLM``
    (vocab_size 64: the 33 real tokens + padding rows), with the files ``EsmcTokenizer`` saves
    (tokenizer.json + tokenizer_config.json).  Text is residues without spaces -> <cls> seq <eos>."""
    import torch
    from transformers import EsmcConfig, EsmcForMaskedLM, EsmcTokenizer

    out_dir = _prepare(out_dir)
    config = EsmcConfig(**{**_TINY_ESMC, **(sizes or {})})
    with _seeded(seed), _quiet_transformers():
        model = _new_model(EsmcForMaskedLM, config, torch.float32, sizes, device)
        if nan_weights:
            _poison(model.esmc.layers[-1].mlp.down_proj.weight)
        model.save_pretrained(out_dir, safe_serialization=True)
        EsmcTokenizer().save_pretrained(out_dir)
    return out_dir


BUILDERS: dict[str, Callable[..., Path]] = {
    "prot_t5": build_prot_t5,
    "prost_t5": build_prost_t5,
    "esm2": build_esm2,
    "esm1b": build_esm1b,
    "esmc": build_esmc,
}


def build_all(root: Path) -> dict[str, Path]:
    """Build every checkpoint into ``root/<key>`` (keys: prot_t5, prost_t5, esm2, esm1b, esmc).

    A checkpoint whose ``config.json`` already exists is reused.  Each one is built in a temporary
    sibling directory and renamed into place, so an interrupted or concurrent build never leaves a
    half-written directory behind.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {}
    for key, builder in BUILDERS.items():
        target = root / key
        if not (target / "config.json").exists():
            staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
            umask = os.umask(0)
            os.umask(umask)
            staging.chmod(0o777 & ~umask)  # mkdtemp creates 0700
            try:
                builder(staging)
                try:
                    os.replace(staging, target)  # atomic; fails if another process won the race
                except OSError:
                    if not (target / "config.json").exists():
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        built[key] = target
    return built


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m tests.tiny_checkpoints DIR", file=sys.stderr)
        return 2
    for key, path in build_all(Path(argv[0])).items():
        print(f"{key} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
