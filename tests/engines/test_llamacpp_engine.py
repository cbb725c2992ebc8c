"""The llama.cpp step engine on the tiny GPT-2 and the tiny chat Llama, each converted to a float32 GGUF the way
prepare-model converts it: its logits are transformers', however the tokens are chunked, batched or cached."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from distilgpt2_api.engines import ModelInfo, ModelLoadError, load_engine
from distilgpt2_api.engines.base import Chunk, TextTokenizer
from distilgpt2_api.engines.llamacpp_engine import GGUF_NAME, MIN_STREAM, LlamaCppEngine
from distilgpt2_api.model_store.llamacpp_gguf import quantize_gguf, quantized_name, write_gguf

from model_factory import build_tiny_chat_llama

SLOTS = 4
# The GGUF holds the float32 weights; what differs from transformers is the KV cache's float16 and the order of
# float32 sums: measured at most 1.4e-4 (GPT-2) and 2.8e-4 (Llama) on logits of magnitude below 1.
ATOL = 2e-3
PROMPTS = (
    "Once upon a time there was a little library in the town",
    "The children came to read",
    "On Saturdays the reading room fills with older visitors who study maps",
    "Most people agree",
)


@pytest.fixture(scope="module", params=["model_dir", "chat_model_dir"])
def model(request: pytest.FixtureRequest) -> Path:
    path: Path = request.getfixturevalue(request.param)
    return path


@pytest.fixture(scope="module")
def engine(model: Path) -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine(ModelInfo.read(model), threads=1, slots=SLOTS)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference(model: Path) -> AutoModelForCausalLM:
    return AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompts(model: Path) -> list[list[int]]:
    tokenizer = TextTokenizer(model)
    return [tokenizer.encode(text) for text in PROMPTS]


def reference_logits(model: AutoModelForCausalLM, token_ids: list[int]) -> np.ndarray:
    """transformers' logits after each of `token_ids`: (len, vocab)."""
    with torch.inference_mode():
        return model(torch.tensor([token_ids])).logits[0].float().numpy()


def greedy(engine: LlamaCppEngine, prompts: dict[int, list[int]], steps: int) -> tuple[dict[int, list[int]], float]:
    """Prefill every slot's prompt in one forward, then decode them together `steps` tokens with argmax.
    Returns each slot's tokens and the smallest margin between the best and second-best logit seen."""
    for slot in prompts:
        engine.truncate(slot, 0)
    chunks = [Chunk(slot, ids, 0) for slot, ids in prompts.items()]
    lengths = {slot: len(ids) for slot, ids in prompts.items()}
    tokens: dict[int, list[int]] = {slot: [] for slot in prompts}
    margin = np.inf
    for _ in range(steps):
        logits = engine.forward(chunks)
        top2 = np.sort(logits, axis=1)[:, -2:]
        margin = min(margin, float((top2[:, 1] - top2[:, 0]).min()))
        chunks = []
        for row, slot in enumerate(prompts):
            token = int(np.argmax(logits[row]))
            tokens[slot].append(token)
            chunks.append(Chunk(slot, [token], lengths[slot]))
            lengths[slot] += 1
    return tokens, margin


def test_forward_gives_transformers_logits(
    engine: LlamaCppEngine, reference: AutoModelForCausalLM, prompts: list[list[int]]
) -> None:
    ids = prompts[0]
    engine.truncate(0, 0)
    logits = engine.forward([Chunk(0, ids, 0)])
    assert logits.shape == (1, engine.tokenizer.vocab_size) and logits.dtype == np.float32
    expected = reference_logits(reference, ids)[-1]
    np.testing.assert_allclose(logits[0], expected, atol=ATOL)
    assert int(np.argmax(logits[0])) == int(np.argmax(expected))


def test_a_prompt_in_chunks_gives_the_logits_of_one_chunk(
    engine: LlamaCppEngine, reference: AutoModelForCausalLM, prompts: list[list[int]]
) -> None:
    ids = prompts[2]
    engine.truncate(1, 0)
    whole = engine.forward([Chunk(1, ids, 0)])[0]
    engine.truncate(1, 0)
    expected = reference_logits(reference, ids)
    for start, end in ((0, 3), (3, 4), (4, 9), (9, len(ids))):
        part = engine.forward([Chunk(1, ids[start:end], start)])[0]
        np.testing.assert_allclose(part, expected[end - 1], atol=ATOL)
    np.testing.assert_allclose(part, whole, atol=1e-3)


def test_slots_decoded_together_choose_what_each_chooses_alone(
    engine: LlamaCppEngine, prompts: list[list[int]]
) -> None:
    together, margin = greedy(engine, dict(enumerate(prompts)), steps=16)
    for slot, ids in enumerate(prompts):
        alone, _ = greedy(engine, {slot: ids}, steps=16)
        assert together[slot] == alone[slot], f"slot {slot} (smallest top-2 margin {margin:.4f})"


def test_a_forward_of_more_tokens_than_a_ubatch(engine: LlamaCppEngine) -> None:
    rng = np.random.default_rng(0)
    long = [rng.integers(1, 900, size=engine.context - 10).tolist() for _ in range(SLOTS)]  # 4 x 246 > 512
    for slot in range(SLOTS):
        engine.truncate(slot, 0)
    together = engine.forward([Chunk(slot, ids, 0) for slot, ids in enumerate(long)])
    for slot, ids in enumerate(long):
        engine.truncate(slot, 0)
        np.testing.assert_allclose(together[slot], engine.forward([Chunk(slot, ids, 0)])[0], atol=1e-3)


def test_truncate_then_refeed_gives_the_same_logits(engine: LlamaCppEngine, prompts: list[list[int]]) -> None:
    ids = prompts[0] + prompts[1]
    engine.truncate(2, 0)
    first = engine.forward([Chunk(2, ids, 0)])[0]
    engine.truncate(2, 5)
    again = engine.forward([Chunk(2, ids[5:], 5)])[0]
    np.testing.assert_allclose(again, first, atol=1e-3)
    engine.truncate(2, 0)  # emptied: a different prompt from position 0 sees nothing of the old one
    other = engine.forward([Chunk(2, prompts[3], 0)])[0]
    engine.truncate(3, 0)
    np.testing.assert_allclose(other, engine.forward([Chunk(3, prompts[3], 0)])[0], atol=1e-3)


def test_a_chunk_replaces_what_its_slot_held_beyond_start(engine: LlamaCppEngine, prompts: list[list[int]]) -> None:
    ids = prompts[2]
    engine.truncate(0, 0)
    expected = engine.forward([Chunk(0, ids, 0)])[0]
    engine.forward([Chunk(0, prompts[1], len(ids))])  # the slot now holds more than `ids`
    np.testing.assert_allclose(engine.forward([Chunk(0, ids[-3:], len(ids) - 3)])[0], expected, atol=1e-3)


def test_copy_prefix_continues_exactly_like_the_source(engine: LlamaCppEngine, prompts: list[list[int]]) -> None:
    shared = prompts[0]
    source, target = 0, 3
    engine.truncate(target, 0)
    engine.forward([Chunk(target, prompts[3], 0)])  # whatever the target held is replaced
    engine.truncate(source, 0)
    engine.forward([Chunk(source, shared, 0)])
    cut = len(shared) - 4
    engine.copy_prefix(source, target, cut)
    rest = shared[cut:]
    logits = engine.forward([Chunk(target, rest, cut), Chunk(source, rest, cut)])
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-3)
    lengths = len(shared)
    for _ in range(8):  # and both keep choosing the same tokens, decoded together
        token = int(np.argmax(logits[1]))
        assert int(np.argmax(logits[0])) == token
        logits = engine.forward([Chunk(target, [token], lengths), Chunk(source, [token], lengths)])
        lengths += 1


def test_slots_are_independent(engine: LlamaCppEngine, prompts: list[list[int]]) -> None:
    engine.truncate(0, 0)
    alone = engine.forward([Chunk(0, prompts[0], 0)])[0]
    for slot in range(1, SLOTS):  # the others fill, change and empty in the meantime
        engine.truncate(slot, 0)
        engine.forward([Chunk(slot, prompts[slot], 0)])
    engine.copy_prefix(1, 2, 3)
    engine.truncate(3, 0)
    engine.truncate(0, len(prompts[0]) - 1)
    again = engine.forward([Chunk(0, prompts[0][-1:], len(prompts[0]) - 1), Chunk(1, [5], len(prompts[1]))])[0]
    np.testing.assert_allclose(again, alone, atol=1e-3)


def test_bad_slots_and_sizes_are_refused(engine: LlamaCppEngine) -> None:
    with pytest.raises(ValueError, match="out of range"):
        engine.forward([Chunk(SLOTS, [1], 0)])
    with pytest.raises(ValueError, match="out of range"):
        engine.truncate(-1, 0)
    with pytest.raises(ValueError, match="empty chunk"):
        engine.forward([Chunk(0, [], 0)])
    with pytest.raises(ValueError, match="would hold"):
        engine.forward([Chunk(0, [1], engine.context)])


def test_load_engine_gives_a_step_engine_with_its_slots(model_dir: Path, tmp_path: Path) -> None:
    engine = load_engine(model_dir, "llamacpp", threads=1, slots=2)
    try:
        assert isinstance(engine, LlamaCppEngine) and engine.slots == 2
        assert engine.context == ModelInfo.read(model_dir).context_length
        assert engine.forward([Chunk(0, [1, 2], 0), Chunk(1, [3], 0)]).shape == (2, engine.tokenizer.vocab_size)
    finally:
        engine.close()
        engine.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        engine.forward([Chunk(0, [1], 0)])
    without = tmp_path / "no-gguf"
    without.mkdir()
    for path in model_dir.iterdir():
        if path.is_file() and path.name != GGUF_NAME:
            (without / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ModelLoadError, match=f"no {GGUF_NAME}"):
        load_engine(without, "llamacpp", threads=1, slots=1)


def test_a_q8_0_copy_stays_close_to_float32(model_dir: Path, tmp_path: Path) -> None:
    prompts = [TextTokenizer(model_dir).encode(text) for text in PROMPTS]
    model = tmp_path / "model"
    model.mkdir()
    for path in model_dir.iterdir():
        if path.is_file():
            (model / path.name).write_bytes(path.read_bytes())
    quantize_gguf(model, "q8_0")
    assert (model / quantized_name("q8_0")).stat().st_size < (model / GGUF_NAME).stat().st_size / 2
    info = ModelInfo.read(model)
    full = LlamaCppEngine(info, threads=1, slots=1)
    q8 = LlamaCppEngine(info, threads=1, slots=1, gguf=quantized_name("q8_0"))
    try:
        for ids in prompts:
            full.truncate(0, 0)
            q8.truncate(0, 0)
            exact, quantized = full.forward([Chunk(0, ids, 0)])[0], q8.forward([Chunk(0, ids, 0)])[0]
            assert not np.array_equal(quantized, exact)  # it is another file, with other weights
            np.testing.assert_allclose(quantized, exact, atol=0.05)
    finally:
        full.close()
        q8.close()


def decode_greedily(engine: LlamaCppEngine, slot: int, ids: list[int], steps: int) -> list[np.ndarray]:
    """`ids` into the empty `slot`, then `steps` argmax tokens, alone: the logits of every step."""
    engine.truncate(slot, 0)
    rows = [engine.forward([Chunk(slot, ids, 0)])[0]]
    for step in range(steps):
        rows.append(engine.forward([Chunk(slot, [int(np.argmax(rows[-1]))], len(ids) + step)])[0])
    return rows


@pytest.fixture(scope="module")
def long_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny chat Llama with a context of 1,024 positions (RoPE: no position table to resize), as a GGUF."""
    path = build_tiny_chat_llama(tmp_path_factory.mktemp("models") / "tiny-llama-1024")
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 1024
    (path / "config.json").write_text(json.dumps(config))
    write_gguf(path)
    return path


def test_kv_streams_start_small_not_at_slots_x_context(long_model_dir: Path) -> None:
    info = ModelInfo.read(long_model_dir)
    assert info.context_length == 1024
    engines = [
        LlamaCppEngine(info, threads=1, slots=12),
        LlamaCppEngine(info, threads=1, slots=12, slot_tokens=600),
        load_engine(long_model_dir, "llamacpp", threads=1, slots=2, slot_tokens=5000),
    ]
    try:
        least, some, most = engines
        assert least.context == 1024 and least.stream == MIN_STREAM and least.kv_cells == 12 * MIN_STREAM
        assert some.stream == 768  # llama.cpp rounds a stream up to a multiple of 256
        assert isinstance(most, LlamaCppEngine) and most.stream == most.context == 1024
    finally:
        for engine in engines:
            engine.close()


def test_a_sequence_beyond_its_stream_grows_them_all_and_every_slot_continues_exactly(long_model_dir: Path) -> None:
    info = ModelInfo.read(long_model_dir)
    rng = np.random.default_rng(1)
    prompt = rng.integers(1, 900, size=240).tolist()
    filler = rng.integers(1, 900, size=200).tolist()
    roomy = LlamaCppEngine(info, threads=1, slots=SLOTS, slot_tokens=1024)
    small = LlamaCppEngine(info, threads=1, slots=SLOTS)
    try:
        for engine in (roomy, small):
            engine.forward([Chunk(3, filler, 0)])
            engine.copy_prefix(3, 2, 60)
        expected = decode_greedily(roomy, 0, prompt, 40)
        got = decode_greedily(small, 0, prompt, 40)  # 240 + 40 > 256: every stream moves to 512 positions
        assert small.stream == 512 and roomy.stream == 1024
        for step, (a, b) in enumerate(zip(expected, got, strict=True)):
            np.testing.assert_array_equal(b, a, err_msg=f"step {step}")
        # What the other slots held before the move is still there, the copy's and the source's alike.
        for engine in (roomy, small):
            both = engine.forward([Chunk(2, filler[60:70], 60), Chunk(3, [filler[69]], 69)])
            np.testing.assert_allclose(both[0], both[1], atol=1e-3)
        np.testing.assert_array_equal(small.forward([Chunk(3, [5], 70)]), roomy.forward([Chunk(3, [5], 70)]))
        small.forward([Chunk(1, rng.integers(1, 900, size=900).tolist(), 0)])  # beyond twice: what it needs
        assert small.stream == 1024
        with pytest.raises(ValueError, match="would hold"):
            small.forward([Chunk(0, [1], 1024)])
    finally:
        roomy.close()
        small.close()


def test_what_a_slot_computes_does_not_depend_on_what_other_slots_held(long_model_dir: Path) -> None:
    """The same logits alone and after batch mates came, went and left their cells free, streams grown or not."""
    info = ModelInfo.read(long_model_dir)
    prompt = TextTokenizer(long_model_dir).encode(PROMPTS[0])
    alone_engine = LlamaCppEngine(info, threads=1, slots=SLOTS)
    busy = LlamaCppEngine(info, threads=1, slots=SLOTS)
    try:
        alone = decode_greedily(alone_engine, 0, prompt, 30)
        busy.forward([Chunk(1, list(range(100, 200)), 0)])
        rows = [busy.forward([Chunk(0, prompt, 0)])[0]]
        busy.truncate(1, 0)  # a mate leaves
        for step in range(30):
            chunks = [Chunk(0, [int(np.argmax(rows[-1]))], len(prompt) + step)]
            if step >= 10:  # another comes and decodes alongside
                chunks.append(Chunk(2, [7 + step], step - 10))
            rows.append(busy.forward(chunks)[0])
        for step, (a, b) in enumerate(zip(alone, rows, strict=True)):
            np.testing.assert_allclose(b, a, atol=1e-3, err_msg=f"step {step}")
    finally:
        alone_engine.close()
        busy.close()


EXIT_SCRIPT = """
import sys
from pathlib import Path
from distilgpt2_api.engines import load_engine
from distilgpt2_api.engines.base import Chunk

engine = load_engine(Path(sys.argv[1]), "llamacpp", threads=1, slots=2)
print(int(engine.forward([Chunk(0, [1, 2, 3], 0), Chunk(1, [4], 0)]).argmax()))
"""


def test_a_process_that_computed_exits_cleanly_without_closing(model_dir: Path) -> None:
    """Backends are loaded by the engine itself (no CPU backend: a segfault), and what it holds is freed at exit."""
    run = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, str(model_dir)], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().isdigit()


def test_chunks_in_any_slot_order_get_their_own_logits(engine: LlamaCppEngine, prompts: list[list[int]]) -> None:
    """forward feeds llama.cpp its chunks in slot order (one pass over consecutive slots), answers in the caller's."""
    slots = list(range(SLOTS))
    for slot in slots:
        engine.truncate(slot, 0)
    in_order = engine.forward([Chunk(slot, prompts[slot], 0) for slot in slots])
    for slot in slots:
        engine.truncate(slot, 0)
    reversed_order = engine.forward([Chunk(slot, prompts[slot], 0) for slot in reversed(slots)])
    np.testing.assert_array_equal(reversed_order[::-1], in_order)
