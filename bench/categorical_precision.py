"""float32 vs float64 categorical sampling (Zheng et al. 2024): the truncated noise lowers the temperature.

Fixed logits (standard normal × ``--scale``, seeded) over V tokens. Two settings:

- ``reveal = 1``: one plain draw from softmax(logits);
- ``reveal = r < 1``: one draw of MDLM's ancestral step, over the V tokens with total mass r and
  "stay masked" with mass 1 − r (r ≈ 1 / steps); only the draws that reveal a token are scored.

Draws use the Gumbel-max trick in MDLM's exponential-race form (``sample_categorical(...,
method="gumbel")``) in float64 and in float32. For the drawn tokens we report the mean of −log p
(an unbiased estimate of the entropy of what is drawn; it equals H(p) for an exact sampler), the
plug-in entropy of the empirical distribution, the reveal rate, and the *effective temperature*: the
T for which tokens drawn from softmax(logits / T) have that mean −log p (exactly 1 for an exact sampler).

    python bench/categorical_precision.py [--vocab 1024 8192 32768 65536] [--draws 40000] [--reveal 1 0.01]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from mmtok.media import markdown_table
from mmtok.sampling import sample_categorical


def drawn_tokens(logits: torch.Tensor, reveal: float, draws: int, precision: str, seed: int,
                 chunk: int) -> torch.Tensor:
    """Indices of revealed tokens over ``draws`` draws (the stay category, index V, removed)."""
    log_probs = logits.double().log_softmax(-1) + math.log(reveal)
    categories = log_probs if reveal >= 1 else torch.cat([log_probs, torch.tensor([math.log1p(-reveal)])])
    categories = categories.to(torch.float64 if precision == "float64" else torch.float32)
    generator = torch.Generator().manual_seed(seed)
    pieces = []
    for start in range(0, draws, chunk):
        rows = min(chunk, draws - start)
        pieces.append(sample_categorical(categories.expand(rows, -1), generator=generator, precision=precision,
                                         method="gumbel"))
    tokens = torch.cat(pieces)
    return tokens[tokens < logits.shape[-1]]


def expected_surprisal(logits: torch.Tensor, temperature: float) -> float:
    """E_{x ~ softmax(logits / T)}[−log softmax(logits)(x)]."""
    log_p = logits.double().log_softmax(-1)
    return float(-(torch.softmax(logits.double() / temperature, -1) * log_p).sum())


def effective_temperature(logits: torch.Tensor, surprisal: float) -> float:
    """The T whose expected surprisal equals ``surprisal`` (it increases with T), by bisection."""
    low, high = 0.05, 4.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if expected_surprisal(logits, middle) < surprisal else (low, middle)
    return (low + high) / 2


def row(vocab: int, reveal: float, precision: str, args) -> dict:
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(args.seed)) * args.scale
    start = time.perf_counter()
    tokens = drawn_tokens(logits, reveal, args.draws, precision, args.seed + 1, args.chunk)
    seconds = time.perf_counter() - start
    log_p = logits.double().log_softmax(-1)
    surprisal = float(-log_p[tokens].mean())
    counts = torch.bincount(tokens, minlength=vocab).double()
    empirical = counts[counts > 0] / counts.sum()
    return {"V": vocab, "reveal": reveal, "precision": precision, "exact_entropy": float(-(log_p.exp() * log_p).sum()),
            "drawn_mean_neg_log_p": surprisal,
            "std_error": float(log_p[tokens].std() / math.sqrt(len(tokens))),
            "plug_in_entropy": float(-(empirical * empirical.log()).sum()),
            "reveal_rate": len(tokens) / args.draws, "effective_T": effective_temperature(logits, surprisal),
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, nargs="+", default=[1024, 8192, 32768, 65536])
    parser.add_argument("--reveal", type=float, nargs="+", default=[1.0, 0.01])
    parser.add_argument("--draws", type=int, default=40_000)
    parser.add_argument("--scale", type=float, default=2.0, help="logits are N(0, 1) times this")
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = [row(vocab, reveal, precision, args) for vocab in args.vocab for reveal in args.reveal
            for precision in ("float64", "float32")]
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
