"""Tiny random-weight models written at test time (no binary is committed).

* :func:`write_tiny_mixtral_gguf`: a Mixtral-architecture GGUF (llama arch, 8 experts, 2 used per token) with
  the real 32,000-token Mixtral vocabulary from mistral-common's ``tokenizer.model.v1``; ~19 MB, all tensors
  f32.
* :func:`write_tiny_mixtral_hf`: a random ``MixtralForCausalLM`` folder with the same tokenizer, for the
  transformers backend.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

MIXTRAL_V1_TOKENIZER = Path(str(__import__("mistral_common").__file__)).parent / "data" / "tokenizer.model.v1"

N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
N_LAYER = 2
N_EXPERT = 8
N_EXPERT_USED = 2
N_CTX_TRAIN = 4096


def write_tiny_mixtral_gguf(path: Path, *, seed: int = 0, n_ctx_train: int = N_CTX_TRAIN) -> Path:
    """Write a random Mixtral-architecture GGUF with the real Mixtral vocabulary to ``path``."""
    import gguf

    vocab_dir = path.parent / "tiny-mixtral-vocab"
    vocab_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MIXTRAL_V1_TOKENIZER, vocab_dir / "tokenizer.model")
    vocab = gguf.vocab.SentencePieceVocab(vocab_dir)
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.sentencepiece_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    n_vocab = len(tokens)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-mixtral")
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_expert_count(N_EXPERT)
    writer.add_expert_used_count(N_EXPERT_USED)
    writer.add_vocab_size(n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(True)

    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    head_dim = N_EMBD // N_HEAD
    writer.add_tensor("token_embd.weight", rand(n_vocab, N_EMBD))
    for layer in range(N_LAYER):
        prefix = f"blk.{layer}."
        writer.add_tensor(prefix + "attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(prefix + "attn_q.weight", rand(N_EMBD, N_EMBD))
        writer.add_tensor(prefix + "attn_k.weight", rand(N_HEAD_KV * head_dim, N_EMBD))
        writer.add_tensor(prefix + "attn_v.weight", rand(N_HEAD_KV * head_dim, N_EMBD))
        writer.add_tensor(prefix + "attn_output.weight", rand(N_EMBD, N_EMBD))
        writer.add_tensor(prefix + "ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(prefix + "ffn_gate_inp.weight", rand(N_EXPERT, N_EMBD))
        writer.add_tensor(prefix + "ffn_gate_exps.weight", rand(N_EXPERT, N_FF, N_EMBD))
        writer.add_tensor(prefix + "ffn_up_exps.weight", rand(N_EXPERT, N_FF, N_EMBD))
        writer.add_tensor(prefix + "ffn_down_exps.weight", rand(N_EXPERT, N_EMBD, N_FF))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    writer.add_tensor("output.weight", rand(n_vocab, N_EMBD))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_mixtral_hf(folder: Path, *, seed: int = 0) -> Path:
    """Save a random ``MixtralForCausalLM`` (and the Mixtral v1 tokenizer) to ``folder``."""
    import torch
    from transformers import AutoTokenizer, MixtralConfig, MixtralForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = MixtralConfig(
        vocab_size=32000,
        hidden_size=N_EMBD,
        intermediate_size=N_FF,
        num_hidden_layers=N_LAYER,
        num_attention_heads=N_HEAD,
        num_key_value_heads=N_HEAD_KV,
        num_local_experts=N_EXPERT,
        num_experts_per_tok=N_EXPERT_USED,
        max_position_embeddings=N_CTX_TRAIN,
        bos_token_id=1,
        eos_token_id=2,
    )
    MixtralForCausalLM(config).save_pretrained(folder)
    shutil.copyfile(MIXTRAL_V1_TOKENIZER, folder / "tokenizer.model")
    AutoTokenizer.from_pretrained(folder).save_pretrained(folder)
    return folder
