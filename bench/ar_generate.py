"""Tokens per second of mmtok's AR generation against Hugging Face ``LlamaForCausalLM.generate``.

Both models have random weights and the same size (width, depth, heads, SwiGLU width, vocabulary),
both use a KV cache, both sample (temperature 1, no top-k/top-p) a batch of 8 sequences of 1,024 new
tokens from a one-token prompt. The mmtok model is an :class:`mmtok.codebook_transformer.CodebookTransformer`
with one codebook through the parallel pattern, the setting of a single-codebook tokenizer.

    python bench/ar_generate.py [--batch 8] [--new-tokens 1024] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from mmtok.ar.sampling import generate
from mmtok.codebook_transformer import CodebookTransformer
from mmtok.media import markdown_table
from mmtok.patterns import ParallelPattern


def build_models(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    ours = CodebookTransformer(codebook_sizes=[args.vocab], dim=args.dim, num_layers=args.layers,
                               num_heads=args.heads).eval()
    hidden = ours.transformer.blocks[0].ff.out.in_features
    config = LlamaConfig(vocab_size=args.vocab + 1, hidden_size=args.dim, intermediate_size=hidden,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=args.new_tokens + 8,
                         tie_word_embeddings=False, bos_token_id=args.vocab, eos_token_id=None)
    reference = LlamaForCausalLM(config).eval()
    return ours, reference


def time_best(function, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    args = parser.parse_args()
    ours, reference = build_models(args)
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    prompt = torch.full((args.batch, 1), args.vocab)

    def run_ours():
        generate(ours, ParallelPattern(), num_frames=args.new_tokens, batch_size=args.batch,
                 rng=torch.Generator().manual_seed(0))

    def run_reference():
        with torch.no_grad():
            out = reference.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                                     min_new_tokens=args.new_tokens, pad_token_id=args.vocab,
                                     do_sample=True, top_k=0, top_p=1.0, temperature=1.0, use_cache=True)
        assert out.shape == (args.batch, args.new_tokens + 1)

    tokens = args.batch * args.new_tokens
    seconds = {"mmtok": time_best(run_ours, args.repeats), "transformers": time_best(run_reference, args.repeats)}
    rows = [{"implementation": name, "parameters": count(model), "seconds": seconds[name],
             "tokens_per_s": tokens / seconds[name]}
            for name, model in (("mmtok", ours), ("transformers", reference))]
    print(f"batch {args.batch}, {args.new_tokens} new tokens, width {args.dim}, {args.layers} layers, "
          f"{args.heads} heads, vocabulary {args.vocab}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(markdown_table(rows))
    print(f"mmtok / transformers speed: {seconds['transformers'] / seconds['mmtok']:.2f}x")


if __name__ == "__main__":
    main()
