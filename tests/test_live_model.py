"""Specifications of the live Llama model (pdsim.live.model): KV accounting, KV-cached decode equals
recomputation, flattened batching equals running alone, chunked prefill equals one shot, KV export /
import across instances, determinism, and the errors of a malformed iteration."""

from __future__ import annotations

import json
from importlib import resources

import pytest

torch = pytest.importorskip("torch")

from pdsim.live.model import LlamaConfig, LlamaModel, rope_inv_freq  # noqa: E402
from pdsim.models.arch import model_from_hf_config  # noqa: E402

ATOL = 2e-4  # fp32 logits (std ~0.5) through 4 layers; batching only reorders sums


@pytest.fixture(scope="module")
def tiny_cfg() -> dict:
    path = resources.files("pdsim") / "data/model_configs/pdsim-tiny-llama.json"
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def small_cfg(tiny_cfg) -> dict:
    """A smaller GQA Llama (fast to build) with tied embeddings."""
    return {**tiny_cfg, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 1000,
            "tie_word_embeddings": True}


@pytest.fixture(scope="module")
def _tiny_models(tiny_cfg):
    return LlamaModel(tiny_cfg, seed=7), LlamaModel(tiny_cfg, seed=7)


@pytest.fixture
def model_pair(_tiny_models):
    """Two tiny-Llama instances with the same seed, built once per module, their KV caches emptied
    (and the in-place decode path re-enabled) after each test; decode path counts and workspace reset."""
    for m in _tiny_models:
        m.decode_path_counts = {"in_place": 0, "gather": 0}
        m.release_workspace()
    yield _tiny_models
    clear(*_tiny_models)
    for m in _tiny_models:
        m.decode_fast_path = True


def prompt(n: int, salt: int, vocab: int = 32000) -> list[int]:
    return [(salt * 7919 + i * 104729) % vocab for i in range(n)]


def clear(*models: LlamaModel) -> None:
    for m in models:
        for sid in m.kv.seq_ids():
            m.free(sid)


# --- weights -------------------------------------------------------------------------------------


def test_weight_shapes_init_and_parameter_count(tiny_cfg, model_pair):
    m, _ = model_pair
    w = m.layers[0]
    assert tuple(w.qkv.shape) == ((8 + 2 * 2) * 64, 512)
    assert tuple(w.o.shape) == (512, 8 * 64)
    assert tuple(w.gate_up.shape) == (2 * 1536, 512)
    assert tuple(w.down.shape) == (512, 1536)
    assert tuple(m.embed.shape) == (32000, 512) and tuple(m.lm_head.shape) == (32000, 512)
    assert m.lm_head.data_ptr() != m.embed.data_ptr()  # untied in this config
    for name, t in m.weights().items():
        assert t.dtype == torch.float32 and torch.isfinite(t).all(), name
        assert t.abs().sum() > 0, f"{name} is all zero"
    assert abs(float(w.qkv.std()) - 0.02) < 1e-3  # HF initializer_range
    assert m.num_parameters() == model_from_hf_config("tiny", tiny_cfg).total_params()


def test_tied_embeddings_share_the_matrix(small_cfg):
    m = LlamaModel(small_cfg, seed=1)
    assert m.lm_head.data_ptr() == m.embed.data_ptr()
    assert m.num_parameters() == model_from_hf_config("small", small_cfg).total_params()


def test_same_seed_same_weights_and_outputs_other_seed_differs(small_cfg):
    a, b, c = (LlamaModel(small_cfg, seed=s) for s in (3, 3, 4))
    for name, t in a.weights().items():
        assert torch.equal(t, b.weights()[name]), name
    assert not torch.equal(a.layers[0].qkv, c.layers[0].qkv)
    p = [("x", prompt(23, 1, 1000)), ("y", prompt(5, 2, 1000))]
    out_a, out_b = a.step(prefill=p), b.step(prefill=p)
    assert out_a == out_b
    la = a.step_logits(decode=[("x", out_a["x"]), ("y", out_a["y"])])
    lb = b.step_logits(decode=[("x", out_b["x"]), ("y", out_b["y"])])
    assert all(torch.equal(la[k], lb[k]) for k in la)


def naive_llama_logits(m: LlamaModel, cfg: dict, ids: list[int]) -> torch.Tensor:
    """Last-token logits of a prompt, written from the Llama definition token by token (no fused
    kernels, no cache): an independent reference for RoPE, GQA head mapping, norms and the MLP."""
    H, KVH, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    inter, eps, theta = cfg["intermediate_size"], cfg["rms_norm_eps"], cfg["rope_theta"]

    def rms(x, w):
        return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)

    def rope(x, pos):  # x [heads, D]: pairs (i, i + D/2) rotated by pos * theta^(-2i/D)
        out = x.clone()
        for i in range(D // 2):
            ang = pos * theta ** (-2 * i / D)
            c, s = torch.cos(torch.tensor(ang)), torch.sin(torch.tensor(ang))
            out[:, i] = x[:, i] * c - x[:, i + D // 2] * s
            out[:, i + D // 2] = x[:, i + D // 2] * c + x[:, i] * s
        return out

    h = m.embed[torch.tensor(ids)].clone()
    for w in m.layers:
        x = rms(h, w.input_norm)
        qkv = x @ w.qkv.T
        q = qkv[:, :H * D].reshape(-1, H, D)
        k = qkv[:, H * D:(H + KVH) * D].reshape(-1, KVH, D)
        v = qkv[:, (H + KVH) * D:].reshape(-1, KVH, D)
        q = torch.stack([rope(q[t], t) for t in range(len(ids))])
        k = torch.stack([rope(k[t], t) for t in range(len(ids))])
        attn = torch.empty(len(ids), H, D)
        for head in range(H):
            kv_head = head // (H // KVH)
            for t in range(len(ids)):
                scores = k[: t + 1, kv_head] @ q[t, head] / D ** 0.5
                attn[t, head] = torch.softmax(scores, 0) @ v[: t + 1, kv_head]
        h = h + attn.reshape(len(ids), H * D) @ w.o.T
        x = rms(h, w.post_attention_norm)
        gu = x @ w.gate_up.T
        h = h + (torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]) @ w.down.T
    return rms(h[-1], m.final_norm) @ m.lm_head.T


def test_prefill_matches_a_naive_llama_reference(tiny_cfg, model_pair):
    m, _ = model_pair
    ids = prompt(7, 21)
    got = m.step_logits(prefill=[("n", ids)])["n"]
    with torch.inference_mode():
        want = naive_llama_logits(m, tiny_cfg, ids)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


# --- KV cache ------------------------------------------------------------------------------------


def test_kv_bytes_used_is_exact(tiny_cfg, model_pair):
    m, _ = model_pair
    per_token = 2 * 4 * 2 * 64 * 4  # 2 x layers x kv_heads x head_dim x fp32 bytes
    assert per_token == model_from_hf_config("tiny", tiny_cfg).kv_bytes_per_token(4)
    assert m.kv_bytes_used() == 0
    out = m.step(prefill=[("a", prompt(5, 1)), ("b", prompt(37, 2))])
    assert m.kv_bytes_used() == 42 * per_token
    m.step(decode=[("a", out["a"]), ("b", out["b"])])
    assert m.kv_bytes_used("a") == 6 * per_token and m.kv_bytes_used("b") == 38 * per_token
    assert m.kv_bytes_used() == 44 * per_token
    k, v = m.kv_export("b")
    assert tuple(k.shape) == (4, 2, 38, 64) and k.nbytes + v.nbytes == m.kv_bytes_used("b")
    assert m.kv_bytes_allocated() >= m.kv_bytes_used()
    m.free("a")
    assert m.kv_bytes_used() == 38 * per_token and "a" not in m.kv


def test_kv_bytes_per_token_follows_the_dtype(small_cfg):
    m = LlamaModel(small_cfg, dtype="bf16", seed=0)
    m.step(prefill=[("s", prompt(9, 3, 1000))])
    assert m.kv_bytes_used() == 2 * 2 * 2 * 32 * 2 * 9
    assert m.kv_export("s")[0].dtype == torch.bfloat16


def test_kv_grows_in_blocks_and_keeps_contents(small_cfg):
    m = LlamaModel(small_cfg, seed=0, kv_block_tokens=8)
    m.step(prefill=[("s", prompt(7, 1, 1000))])
    assert m.kv.capacity("s") == 8
    before = m.kv_export("s")[0].clone()
    m.step(decode=[("s", 5)])  # 8 tokens: still fits
    m.step(decode=[("s", 6)])  # 9 tokens: grows to 16
    assert m.kv.capacity("s") == 16 and m.kv_num_tokens("s") == 9
    assert torch.equal(m.kv_export("s")[0][:, :, :7], before)


# --- one iteration vs. reference computations ------------------------------------------------------


def test_cached_decode_equals_full_recomputation(model_pair):
    m, ref = model_pair
    tokens = prompt(12, 5)
    nxt = m.step(prefill=[("s", tokens)])["s"]
    for i in range(5):
        tokens = tokens + [nxt]
        got = m.step_logits(decode=[("s", nxt)])["s"]
        want = ref.step_logits(prefill=[(f"r{i}", tokens)])[f"r{i}"]
        ref.free(f"r{i}")
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
        assert int(got.argmax()) == int(want.argmax())
        nxt = int(got.argmax())
    assert m.kv_num_tokens("s") == len(tokens)


def test_flattened_batch_equals_each_request_alone(model_pair):
    m, ref = model_pair
    p1, p2, p3, p4 = prompt(9, 1), prompt(17, 2), prompt(13, 3), prompt(4, 4)
    first = m.step(prefill=[("p1", p1), ("p2", p2)])
    ref_first = {sid: ref.step(prefill=[(sid, p)])[sid] for sid, p in (("p1", p1), ("p2", p2))}
    assert first == ref_first
    # one iteration: two fresh prompts and two decodes of different context lengths (padded + masked)
    batch = m.step_logits(prefill=[("p3", p3), ("p4", p4)], decode=[("p1", first["p1"]), ("p2", first["p2"])])
    assert list(batch) == ["p3", "p4", "p1", "p2"]
    alone = {
        "p3": ref.step_logits(prefill=[("p3", p3)])["p3"],
        "p4": ref.step_logits(prefill=[("p4", p4)])["p4"],
        "p1": ref.step_logits(decode=[("p1", first["p1"])])["p1"],
        "p2": ref.step_logits(decode=[("p2", first["p2"])])["p2"],
    }
    for sid, logits in batch.items():
        torch.testing.assert_close(logits, alone[sid], atol=ATOL, rtol=0, msg=sid)
        assert int(logits.argmax()) == int(alone[sid].argmax()), sid
    # and the caches they leave behind are the same
    for sid in alone:
        torch.testing.assert_close(m.kv_export(sid)[0], ref.kv_export(sid)[0], atol=1e-5, rtol=0)


def test_decode_workspace_reuse_leaks_nothing_between_iterations(model_pair):
    m, ref = model_pair
    m.decode_fast_path = False  # the gather fallback, which uses the workspace
    lens = {"a": 30, "b": 5, "c": 12}
    for sid, n in lens.items():
        nxt = m.step(prefill=[(sid, prompt(n, n))])[sid]
        assert ref.step(prefill=[(sid, prompt(n, n))])[sid] == nxt
    m.step(decode=[(sid, 1) for sid in lens])  # fills the workspace with a's long context
    for sid in lens:
        ref.step(decode=[(sid, 1)])
    with torch.inference_mode():
        m._decode_workspace.fill_(float("nan"))  # whatever the padding held before must not matter
    got = m.step_logits(decode=[("b", 2), ("c", 3)])  # smaller and ragged: padded and masked
    for sid, tok in (("b", 2), ("c", 3)):
        want = ref.step_logits(decode=[(sid, tok)])[sid]
        torch.testing.assert_close(got[sid], want, atol=ATOL, rtol=0)
    assert m.workspace_bytes() >= 3 * 4 * 2 * 2 * 31 * 64 * 4  # b x layers x K,V x kv_heads x (30 + 1) x d x 4 B
    assert m.decode_path_counts["in_place"] == 0


def test_in_place_decode_matches_the_gather_path(model_pair):
    """A decode batch of sequences created in order occupies a contiguous slot range and is read in
    place (also when listed out of slot order); it gives the gather path's logits and next tokens,
    in the input order, and leaves the same cache."""
    fast, gather = model_pair
    gather.decode_fast_path = False
    lens = {"a": 30, "b": 5, "c": 12, "d": 12}
    for m in (fast, gather):
        for sid, n in lens.items():
            m.step(prefill=[(sid, prompt(n, n))])
    assert [fast.kv.slot(sid) for sid in lens] == [0, 1, 2, 3]
    for batch in ([("a", 1), ("b", 2), ("c", 3), ("d", 4)],  # ragged: masked
                  [("c", 5), ("b", 6), ("d", 7)],  # a permutation of slots 1..3
                  [("c", 8), ("d", 9)]):  # equal contexts: no mask
        before = dict(fast.decode_path_counts)
        got, want = fast.step_logits(decode=batch), gather.step_logits(decode=batch)
        assert fast.decode_path_counts["in_place"] == before["in_place"] + 1
        assert fast.decode_path_counts["gather"] == before["gather"]
        assert list(got) == [sid for sid, _ in batch]
        for sid in got:
            torch.testing.assert_close(got[sid], want[sid], atol=ATOL, rtol=0, msg=sid)
            assert int(got[sid].argmax()) == int(want[sid].argmax()), sid
    assert fast.step(decode=[("b", 1), ("d", 2)]) == gather.step(decode=[("b", 1), ("d", 2)])  # not contiguous
    assert fast.decode_path_counts["gather"] == 1
    for sid in lens:
        assert fast.kv_num_tokens(sid) == gather.kv_num_tokens(sid)
        torch.testing.assert_close(fast.kv_export(sid)[1], gather.kv_export(sid)[1], atol=1e-5, rtol=0)


def test_free_compacts_slots_and_later_decodes_match_a_fresh_prefill(model_pair):
    m, ref = model_pair
    seqs = {sid: prompt(n, n + 40) for sid, n in (("a", 9), ("b", 14), ("c", 6), ("d", 20), ("e", 11))}
    nxt = {}
    for sid, p in seqs.items():
        nxt[sid] = m.step(prefill=[(sid, p)])[sid]
    with torch.inference_mode():  # stale, finite garbage past every sequence's length must not matter
        for sid in seqs:
            m.kv.buffer(sid)[:, :, :, m.kv_num_tokens(sid):] = 1e4
    m.free("b")  # the last slot's sequence ("e") moves into slot 1
    assert [m.kv.slot(sid) for sid in ("a", "e", "c", "d")] == [0, 1, 2, 3] and len(m.kv) == 4
    m.free("a")  # "d" moves into slot 0
    assert sorted(m.kv.slot(sid) for sid in ("c", "d", "e")) == [0, 1, 2]
    live = ["c", "d", "e"]
    for _ in range(3):
        before = m.decode_path_counts["in_place"]
        got = m.step_logits(decode=[(sid, nxt[sid]) for sid in live])
        assert m.decode_path_counts["in_place"] == before + 1
        for sid in live:
            seqs[sid] = seqs[sid] + [nxt[sid]]
            want = ref.step_logits(prefill=[("r", seqs[sid])])["r"]
            ref.free("r")
            torch.testing.assert_close(got[sid], want, atol=ATOL, rtol=0, msg=sid)
            assert int(got[sid].argmax()) == int(want.argmax()), sid
            nxt[sid] = int(got[sid].argmax())
    assert m.kv_bytes_used() == sum(len(p) for sid, p in seqs.items() if sid in live) * m.kv.bytes_per_token


def test_mixed_contexts_in_one_in_place_batch_match_each_alone(model_pair):
    m, ref = model_pair
    lens = {"s": 3, "m": 17, "l": 45, "x": 1}
    first = {}
    for sid, n in lens.items():
        first[sid] = m.step(prefill=[(sid, prompt(n, n + 80))])[sid]
        ref.step(prefill=[(sid, prompt(n, n + 80))])
    got = m.step_logits(decode=[(sid, first[sid]) for sid in lens])
    assert m.decode_path_counts["in_place"] >= 1 and m.decode_path_counts["gather"] == 0
    for sid in lens:
        want = ref.step_logits(decode=[(sid, first[sid])])[sid]
        torch.testing.assert_close(got[sid], want, atol=ATOL, rtol=0, msg=sid)
        assert int(got[sid].argmax()) == int(want.argmax()), sid
    assert m.workspace_bytes() == 0


def test_chunked_prefill_equals_one_shot(model_pair):
    m, ref = model_pair
    p = prompt(40, 9)
    m.step(prefill=[("c", p[:25])])
    other = m.step(prefill=[("o", prompt(6, 8))])["o"]
    # the second chunk shares its iteration with a decode
    chunked = m.step_logits(prefill=[("c", p[25:])], decode=[("o", other)])["c"]
    one_shot = ref.step_logits(prefill=[("c", p)])["c"]
    torch.testing.assert_close(chunked, one_shot, atol=ATOL, rtol=0)
    assert int(chunked.argmax()) == int(one_shot.argmax())
    assert m.kv_num_tokens("c") == 40
    nxt = int(one_shot.argmax())
    assert m.step(decode=[("c", nxt)]) == ref.step(decode=[("c", nxt)])


def test_kv_export_import_continues_on_another_instance(model_pair):
    prefill_inst, decode_inst = model_pair
    p = prompt(21, 11)
    first = prefill_inst.step(prefill=[("r", p)])["r"]
    k, v = prefill_inst.kv_export("r")
    decode_inst.kv_import("r", (k, v))
    assert decode_inst.kv_num_tokens("r") == 21
    assert decode_inst.kv_bytes_used("r") == prefill_inst.kv_bytes_used("r")
    got = decode_inst.step_logits(decode=[("r", first)])["r"]
    want = prefill_inst.step_logits(decode=[("r", first)])["r"]
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="already"):
        decode_inst.kv_import("r", (k, v))
    with pytest.raises(ValueError, match="dtype"):
        decode_inst.kv_import("r2", (k.half(), v.half()))
    with pytest.raises(ValueError, match="shape"):
        decode_inst.kv_import("r3", (k[:3], v[:3]))


# --- errors ---------------------------------------------------------------------------------------


def test_malformed_iterations_fail_without_changing_state(small_cfg):
    m = LlamaModel(small_cfg, seed=0, max_positions=64)
    m.step(prefill=[("a", [1, 2, 3])])
    with pytest.raises(KeyError, match="'zz'"):
        m.step(decode=[("zz", 1)])
    with pytest.raises(ValueError, match="empty"):
        m.step(prefill=[("b", [])])
    with pytest.raises(ValueError, match="token id 1000"):
        m.step(prefill=[("b", [1, 1000])])
    with pytest.raises(ValueError, match="twice"):
        m.step(prefill=[("a", [4])], decode=[("a", 5)])
    with pytest.raises(ValueError, match="max_positions"):
        m.step(prefill=[("b", [1] * 65)])
    assert m.kv.seq_ids() == ["a"] and m.kv_num_tokens("a") == 3
    assert m.step() == {}
    with pytest.raises(ValueError, match="hidden_act"):
        LlamaModel({**small_cfg, "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="num_key_value_heads"):
        LlamaModel({**small_cfg, "num_key_value_heads": 3})


def test_llama3_rope_scaling_keeps_high_and_scales_low_frequencies(tiny_cfg):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    base = rope_inv_freq(LlamaConfig.from_hf({**tiny_cfg, "rope_theta": 500000.0}))
    scaled = rope_inv_freq(LlamaConfig.from_hf({**tiny_cfg, "rope_theta": 500000.0, "rope_scaling": scaling}))
    assert torch.equal(scaled[0], base[0])  # shortest wavelength untouched
    torch.testing.assert_close(scaled[-1], base[-1] / 8.0)  # longest divided by factor
    assert bool((scaled <= base).all())
