"""Model behaviours no other test pins: the dual encoder's AMRB replay of its first document's
last segment (``replay_last``) and memory tokens that are never masked as padding."""

from __future__ import annotations

import pytest
import torch

from test_model import batch, small

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

T, N_SEG = 4, 8  # small(): 4 segments of 8 tokens


def _which_segments_run(model, x1, x2, backprop):
    """Segment computations (document, t) in the forward pass and, separately, in the backward pass."""
    segments = {(doc, t): x[:, t * N_SEG:(t + 1) * N_SEG] for doc, x in ((1, x1), (2, x2)) for t in range(T)}
    phase, calls = "forward", {"forward": [], "backward": []}
    real = model.segment_step

    def counting(t, ids_t, *args):
        doc = next(d for (d, s), ids in segments.items() if s == t and torch.equal(ids, ids_t))
        calls[phase].append((doc, t))
        return real(t, ids_t, *args)

    model.segment_step = counting  # checkpoint() receives, and replays, this function
    logits = model(x1, input_ids_2=x2, backprop=backprop)
    phase = "backward"
    logits.square().sum().backward()
    return calls


def test_dual_encoder_replays_the_first_documents_last_segment():
    """Under AMRB the dual encoder checkpoints every segment of its first document, the last one
    included (``replay_last``): that segment's activations are not kept alive while the second
    document is encoded, and the backward pass recomputes it. The second document's last segment
    is where the backward pass starts, so it keeps its activations and is not recomputed. BPTT
    recomputes nothing."""
    x1, x2 = batch(seed=1), batch(seed=2)
    model = small("rmaat", dual_encoder=True).train()
    amrb = _which_segments_run(model, x1, x2, "amrb")
    assert amrb["forward"] == [(1, t) for t in range(T)] + [(2, t) for t in range(T)]
    assert sorted(amrb["backward"]) == [(1, t) for t in range(T)] + [(2, t) for t in range(T - 1)]
    bptt = _which_segments_run(small("rmaat", dual_encoder=True).train(), x1, x2, "bptt")
    assert bptt["backward"] == []


@pytest.mark.parametrize("placement", ["prepend", "append"])
def test_memory_tokens_are_never_masked_as_padding(placement):
    """Every attention call sees the M memory tokens as real keys, even in a segment with no real
    token at all (row 1 below: 5 real tokens, segments 2-4 all padding); the segment's own tokens
    keep the input's mask."""
    m = 2
    model = small("rmaat", n_mem=m, mem_placement=placement, readout="mean")
    seen = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda _module, args: seen.append(args[1].clone()))
    mask = torch.arange(32)[None, :] < torch.tensor([32, 5])[:, None]  # (B, L)
    assert not mask[1, N_SEG:].any()  # row 1: segments 2-4 hold no real token
    model(batch(b=2), mask)
    assert len(seen) == T * len(model.blocks)
    for call, key_mask in enumerate(seen):
        t = call // len(model.blocks)
        memory, tokens = (key_mask[:, :m], key_mask[:, m:]) if placement == "prepend" else (
            key_mask[:, N_SEG:], key_mask[:, :N_SEG])
        assert key_mask.shape == (2, N_SEG + m)
        assert memory.all(), f"segment {t + 1}: memory masked as padding"
        assert torch.equal(tokens, mask[:, t * N_SEG:(t + 1) * N_SEG])
