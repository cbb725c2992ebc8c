#!/usr/bin/env bash
# Builds the pinned llama-cpp-python wheel (requirements-llamacpp.txt) from its sdist, with this directory's patches
# applied to the llama.cpp it vendors, and CMAKE_ARGS from the environment (the Makefile's LLAMA_CPP_CMAKE_ARGS).
# Prints the wheel's path. Once per pin, patches and CMAKE_ARGS: OUT_DIR/<their hash>/ keeps the wheel, and a later
# run prints it without building (PyPI has only the sdist: about 15 min on 2 cores).
#
#   CMAKE_ARGS="..." [PYTHON=python3] llamacpp/build-wheel.sh OUT_DIR
#
# amx-tile-config.patch: llama.cpp's AMX kernels (the sapphirerapids CPU variant) load a tile config whose stores
# GCC removes as dead, and die with SIGILL on every Intel Xeon with AMX; fixed, they read prompts 2-4x and decode
# 1.8-2.5x faster than the next variant there (Q8_0-Q4_1, docs/PERFORMANCE.md).
# batch-invariant-attention.patch: flash attention takes one path for every query row, so a sequence's logits do not
# depend on its batch mates, on the KV cache's length or on how its prompt was split (prefix cache); the faster
# split-KV (long-context decode) and tiled (long-prompt) paths changed them by up to 1.5 on SmolLM2 Q4_1.
# GGML_CPU_FA_BATCH_INVARIANT=0 turns them back on (docs/PERFORMANCE.md#batch-invariance).
# spin-barrier.patch: ggml's barrier between operations is libgomp's in an OpenMP build, and libgomp sleeps on a futex
# after 100 spins once it manages more threads than CPUs, which it counts when llama_decode runs outside the process's
# first thread, as the service's generation thread does: every uneven barrier then cost a wake-up (Q4_1 decode 31
# against 315 tok/s from the first thread, 2 threads, AMX). ggml's own spinning barrier is used instead.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: CMAKE_ARGS=... $0 OUT_DIR}"
python="${PYTHON:-python3}"
pin="$(grep '^llama-cpp-python==' "$here/../requirements-llamacpp.txt")"
key="$(cat "$here"/*.patch <(printf '%s\n%s\n' "$pin" "${CMAKE_ARGS:-}") | sha256sum | cut -c1-16)"
dest="$out/$key"
if ! compgen -G "$dest/llama_cpp_python-*.whl" >/dev/null; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    "$python" -m pip download --quiet --no-deps --no-binary :all: --dest "$work" "$pin" >&2
    "$python" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
        "$(compgen -G "$work/llama_cpp_python-*.tar.gz")" "$work"
    source_dir="$(compgen -G "$work/llama_cpp_python-*/")"
    for patch_file in "$here"/*.patch; do
        patch --quiet --forward -p1 -d "$source_dir/vendor/llama.cpp" <"$patch_file" >&2
    done
    "$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/wheel" "$source_dir" >&2
    mkdir -p "$out"
    rm -rf "$dest" "$dest.partial" && mv "$work/wheel" "$dest.partial" && mv "$dest.partial" "$dest"
fi
compgen -G "$dest/llama_cpp_python-*.whl"
