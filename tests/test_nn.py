"""Shared transformer blocks: incremental decoding with a KV cache equals one full pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmtok.nn import Transformer, deepen_state, grid_window_mask, local_attention_mask, rotary_angles, rotary_rotation


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(dim=32, num_layers=3, num_heads=4).eval()


@pytest.mark.parametrize("pieces", [[1] * 12, [5, 1, 1, 1, 4], [12]])
def test_cached_incremental_decoding_equals_a_full_causal_pass(model, pieces):
    x = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(x, causal=True)
        cache = model.new_cache(2, 12)
        outputs, start = [], 0
        for size in pieces:
            outputs.append(model(x[:, start:start + size], causal=True, cache=cache))
            start += size
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(outputs, dim=1), full, atol=1e-5, rtol=1e-5)


def test_left_padded_prompts_match_unpadded_runs(model):
    """Prompts of different lengths, left-padded in one batch, then decoded step by step."""
    generator = torch.Generator().manual_seed(2)
    short, long = torch.randn(1, 3, 32, generator=generator), torch.randn(1, 6, 32, generator=generator)
    new_steps = torch.randn(2, 4, 32, generator=generator)
    prompts = torch.cat([F.pad(short, (0, 0, 3, 0)), long])
    valid = torch.tensor([[False] * 3 + [True] * 3, [True] * 6])
    with torch.no_grad():
        cache = model.new_cache(2, 10)
        model(prompts, valid=valid, causal=True, cache=cache)
        batched = torch.cat([model(new_steps[:, i:i + 1], causal=True, cache=cache) for i in range(4)], dim=1)
        for row, prompt in enumerate([short, long]):
            alone = model(torch.cat([prompt, new_steps[row:row + 1]], dim=1), causal=True)[:, -4:]
            # Rotary positions differ by the padding (3 steps), and attention depends on relative positions only.
            torch.testing.assert_close(batched[row:row + 1], alone, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(batched).all()


def test_the_cache_refuses_more_steps_than_it_holds(model):
    cache = model.new_cache(1, 4)
    with torch.no_grad():
        model(torch.randn(1, 3, 32), causal=True, cache=cache)
        with pytest.raises(ValueError, match="KVCache holds 4 steps; 5 were asked for"):
            model(torch.randn(1, 2, 32), causal=True, cache=cache)


def test_local_attention_mask_values():
    mask = local_attention_mask(5, 1)
    assert mask.int().tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1]]
    with pytest.raises(ValueError, match="window must be ≥ 0"):
        local_attention_mask(3, -1)


@pytest.mark.parametrize("causal", [False, True])
def test_a_windowed_layer_equals_the_layer_run_on_each_steps_neighbourhood(causal):
    """With rotary (relative) positions, local attention at step t is the full layer run on the
    ±window steps around t alone, whatever t is."""
    torch.manual_seed(0)
    layer = Transformer(dim=16, num_layers=1, num_heads=2).eval()
    x, window = torch.randn(2, 20, 16), 3
    out = layer(x, window=window, causal=causal)
    for t in range(20):
        lo, hi = max(0, t - window), min(20, t + window + 1)
        alone = layer(x[:, lo:hi], causal=causal)[:, t - lo]
        torch.testing.assert_close(out[:, t], alone, atol=1e-5, rtol=1e-5)
    valid = torch.ones(2, 20, dtype=torch.bool)
    valid[1, 12:] = False  # padded steps far from any valid key in their window still give finite outputs
    assert torch.isfinite(layer(x, window=2, valid=valid)).all()


def test_a_grid_windowed_layer_equals_the_layer_run_on_each_cells_square():
    """A 2-D window on a 5 x 6 grid: cell (r, c) sees the cells at most 1 row and 1 column away
    (rotary positions relative on both axes: the same as the layer run on that square alone)."""
    torch.manual_seed(0)
    layer = Transformer(dim=16, num_layers=1, num_heads=2, position_axes=2).eval()
    rows, cols = torch.meshgrid(torch.arange(5), torch.arange(6), indexing="ij")
    positions = torch.stack([rows, cols], -1).flatten(0, 1)  # [30, 2]
    mask = grid_window_mask(positions, 1)
    assert mask.sum(1).tolist()[:7] == [4, 6, 6, 6, 6, 4, 6] and mask[7].sum() == 9 and mask.equal(mask.T)
    x = torch.randn(2, 30, 16)
    out = layer(x, positions=positions, window=mask)
    for cell in (0, 8, 29):
        near = mask[cell].nonzero().squeeze(1)
        alone = layer(x[:, near], positions=positions[near])[:, (near == cell).nonzero().item()]
        torch.testing.assert_close(out[:, cell], alone, atol=1e-5, rtol=1e-5)
    only_itself = layer(x, positions=positions, window=grid_window_mask(positions, 0))
    torch.testing.assert_close(only_itself[:, 3], layer(x[:, 3:4], positions=positions[3:4])[:, 0])
    with pytest.raises(ValueError, match="window must be ≥ 0"):
        grid_window_mask(positions, -1)


def test_axial_rotary_angles_split_the_pairs_between_axes():
    """Two axes: the first half of the pairs turns with the row, the second with the column, each
    with the frequency ladder of a head half as wide; one axis is the usual ladder."""
    from mmtok.nn import rotary_angles

    positions = torch.tensor([[2.0, 5.0], [0.0, 3.0]])  # (row, col) of two steps
    angles = rotary_angles(positions, 8, axes=2)
    ladder = 10000.0 ** (-torch.arange(0, 4, 2).float() / 4)  # [1, 0.01]
    torch.testing.assert_close(angles, torch.cat([positions[:, :1] * ladder, positions[:, 1:] * ladder], dim=1))
    torch.testing.assert_close(rotary_angles(torch.tensor([3.0]), 4), torch.tensor([[3.0, 0.03]]))
    with pytest.raises(ValueError, match="divisible by 4"):
        rotary_angles(positions, 6, axes=2)


def test_axial_attention_depends_only_on_relative_grid_offsets():
    """Shifting every (row, col) position by the same offset leaves the outputs unchanged, while
    swapping rows and columns changes them: the model sees 2-D relative positions."""
    torch.manual_seed(0)
    layer = Transformer(dim=16, num_layers=2, num_heads=2, position_axes=2).eval()
    x = torch.randn(1, 6, 16)
    grid = torch.tensor([[r, c] for r in range(2) for c in range(3)], dtype=torch.float)
    out = layer(x, positions=grid)
    torch.testing.assert_close(layer(x, positions=grid + torch.tensor([4.0, -7.0])), out, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(layer(x, positions=grid.flip(-1)), out, atol=1e-4)


def test_num_layers_gives_an_intermediate_layer_without_the_final_norm():
    torch.manual_seed(0)
    transformer = Transformer(dim=16, num_layers=3, num_heads=2).eval()
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(transformer.norm(transformer(x, num_layers=3)), transformer(x))
    torch.testing.assert_close(transformer(x, num_layers=0), x)
    one = transformer.blocks[0](x, rotation=rotary_rotation(rotary_angles(torch.arange(7), 8)))
    torch.testing.assert_close(transformer(x, num_layers=1), one)
    with pytest.raises(ValueError, match="num_layers must be in 0..3"):
        transformer(x, num_layers=4)


def test_a_deepened_stack_computes_the_shallow_function_and_its_new_blocks_learn(model):
    deep = Transformer(dim=32, num_layers=5, num_heads=4)
    state = deepen_state(model.state_dict(), prefix="blocks", num_layers=5)
    deep.load_state_dict(state, strict=True)
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(deep(x), model(x).detach(), atol=1e-6, rtol=1e-6)
    # blocks 0, 1, 2 of 3 sit at 0, 1, 3 of 5; block 2 copies block 1 and block 4 copies block 2 (now 3)
    for new, below in [(2, 1), (4, 2)]:
        assert torch.equal(deep.blocks[new].attention.qkv.weight, model.blocks[below].attention.qkv.weight)
        assert not deep.blocks[new].attention.out.weight.any() and not deep.blocks[new].ff.out.weight.any()
    assert torch.equal(deep.blocks[3].ff.out.weight, model.blocks[2].ff.out.weight)
    deep(x).square().mean().backward()
    assert deep.blocks[2].attention.out.weight.grad.abs().sum() > 0  # zeroed, not dead
    with pytest.raises(ValueError, match=r"blocks holds blocks \[0, 1, 2\], which cannot grow to 2"):
        deepen_state(model.state_dict(), prefix="blocks", num_layers=2)
