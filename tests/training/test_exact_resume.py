"""Exact resume: a run resumed from a checkpoint, mid-epoch or at an epoch's end, ends bit-identical to
the uninterrupted run on CPU (weights, optimizer states, EMA and codebook buffers, random generators, the
loader's position), for the codec (GAN, manual optimisation), AR, masked diffusion and the image tokenizer;
and the resumable loader that makes the batches the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from conftest import REPO, tiny_codec_args
from mmtok.cli import main
from mmtok.data.loading import ResumableLoader, split_key
from test_generator_training import tiny_ar_folder, tiny_tts_args


class DrawingDataset(Dataset):
    """Item i: (i, a draw from the item's own generator), so a batch shows both order and draws."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, key):
        index, rng = split_key(key)
        return torch.tensor([index, rng.randrange(1000)])


def _batches(loader, passes: int):
    for _ in range(passes):
        yield from loader


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_loader_resumed_at_any_batch_gives_the_rest_of_the_run(num_workers):
    make = lambda: ResumableLoader(DrawingDataset(), batch_size=3, seed=7, num_workers=num_workers)  # noqa: E731
    straight = list(_batches(make(), 3))  # 4 batches per epoch (the last one of 1 item)
    assert len(straight) == 12
    assert not all(torch.equal(a, b) for a, b in zip(straight[:4], straight[4:8])), "each epoch has its own order"
    assert sorted(torch.cat(straight[:4])[:, 0].tolist()) == list(range(10)), "an epoch is every item once"
    for stop in range(1, 12):
        first = make()
        batches = _batches(first, 3)
        seen = [next(batches) for _ in range(stop)]
        resumed = make()
        resumed.load_state_dict(first.state_dict())  # a saved pass with all its batches out: the next epoch follows
        rest = list(_batches(resumed, 3 - stop // 4))
        assert len(seen + rest) == 12 and all(torch.equal(a, b) for a, b in zip(seen + rest, straight)), stop


def test_a_pass_left_early_is_continued_by_the_next():
    """Lightning ends an epoch early after some resumes (its counters say the epoch is further on than the
    data): the next pass goes on with the same epoch instead of skipping its last batches."""
    straight = list(_batches(ResumableLoader(DrawingDataset(), batch_size=3, seed=7), 2))
    loader = ResumableLoader(DrawingDataset(), batch_size=3, seed=7)
    first_pass = iter(loader)
    taken = [next(first_pass), next(first_pass)]
    rest = list(_batches(loader, 2))
    assert len(taken + rest) == 8 and all(torch.equal(a, b) for a, b in zip(taken + rest, straight))


def test_processes_share_out_an_epoch_and_a_changed_setup_starts_over(caplog):
    shares = [torch.cat(list(ResumableLoader(DrawingDataset(), batch_size=2, seed=0, num_replicas=2, rank=rank)))
              for rank in (0, 1)]
    alone = torch.cat(list(ResumableLoader(DrawingDataset(), batch_size=2, seed=0)))
    assert sorted(torch.cat(shares)[:, 0].tolist()) == list(range(10)), "two ranks see different items, all of them"
    draws = {int(i): int(d) for i, d in alone.tolist()}
    assert all(draws[int(i)] == int(d) for i, d in torch.cat(shares).tolist()), "an item's draws do not depend on rank"
    loader = ResumableLoader(DrawingDataset(), batch_size=2, seed=0)
    loader.load_state_dict({"epoch": 3, "batches": 2, "seed": 0, "num_replicas": 2, "batch_size": 2})
    assert "epochs start over" in caplog.text
    assert torch.equal(torch.cat(list(loader)), alone), "the run starts from the first epoch's order"


def _tensors(obj, prefix: str = ""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}/{key}")
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}/{index}")


def _final_state(run: Path) -> dict:
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    parts = {part: checkpoint[part] for part in ("state_dict", "optimizer_states", "lr_schedulers", "callbacks")}
    state = dict(_tensors(parts))
    state["global_step"] = torch.tensor(checkpoint["global_step"])
    loader = json.dumps(checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"], sort_keys=True, default=str)
    state["loader"] = torch.frombuffer(bytearray(loader.encode()), dtype=torch.uint8)  # where the data stopped
    return state


def assert_resume_is_exact(args_for, root: Path, *, total: int, stops: list[int]) -> None:
    """``args_for(run, max_steps)``: the `mmtok fit` arguments of one run folder."""
    main(args_for(root / "straight", total))
    reference = _final_state(root / "straight")
    assert any("RandomStates" in key for key in reference), "the generators are in the checkpoint"
    for stop in stops:
        run = root / f"stopped_at_{stop}"
        main(args_for(run, stop))
        main(args_for(run, total) + ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
        resumed = _final_state(run)
        assert resumed.keys() == reference.keys()
        different = [key for key in reference if not torch.equal(reference[key], resumed[key])]
        assert not different, f"resumed at step {stop}: {len(different)} of {len(reference)} tensors differ, " \
                              f"e.g. {different[:3]}"


def test_codec_gan_resume_is_exact(tiny_corpus, tmp_path):
    # 6 batches an epoch; the GAN starts at batch 4 and then counts 2 steps a batch: step 6 stops mid-epoch
    # (5 batches), step 8 at the epoch's end; validation every 2 steps runs on its own generators.
    assert_resume_is_exact(lambda run, steps: tiny_codec_args(tiny_corpus, run, max_steps=steps,
                                                              adversarial_start_step=4, val_check_interval=2),
                           tmp_path, total=16, stops=[6, 8])


def test_codec_resume_from_shards_is_exact(tiny_corpus, tmp_path):
    """The same from litdata shards (StreamingDataLoader): 5 batches of 4 an epoch (drop_last), the GAN
    from batch 4: step 4 stops mid-epoch, step 6 at the epoch's end."""
    from mmtok.data.shards import write_shards

    shards = write_shards(tiny_corpus, tmp_path / "shards")
    assert_resume_is_exact(lambda run, steps: tiny_codec_args(shards, run, max_steps=steps, adversarial_start_step=4,
                                                              val_check_interval=2),
                           tmp_path, total=14, stops=[4, 6])


@pytest.mark.parametrize("recipe", ["ar_rvq_speech.yaml", "mdm_xcodec_speech.yaml"])
def test_generator_resume_is_exact(recipe, tiny_corpus, tiny_codec_folder, tmp_path):
    # 5 batches of 4 an epoch (drop_last): step 3 stops mid-epoch, step 5 at its end
    adapt_from = tiny_ar_folder(tiny_corpus, tiny_codec_folder, tmp_path / "ar") if recipe.startswith("mdm") else None

    def args_for(run: Path, steps: int) -> list[str]:
        return tiny_tts_args(REPO / "recipes" / "tts" / recipe, tiny_corpus, tiny_codec_folder, tmp_path / "tokens",
                             run, max_steps=steps, adapt_from=adapt_from) + ["--trainer.val_check_interval", "1"]

    assert_resume_is_exact(args_for, tmp_path, total=8, stops=[3, 5])


def test_image_tokenizer_resume_is_exact(tmp_path):
    from mmtok.data.images import build_digits_corpus
    from mmtok.judges.digits import DigitClassifier

    digits = build_digits_corpus(tmp_path / "digits", source="sklearn", image_size=32, resize="upscale",
                                 max_per_class=4, progress=False).parent
    torch.manual_seed(0)
    DigitClassifier(widths=[4, 8]).save_pretrained(tmp_path / "judge")
    tokenizer = "--model.init_args.tokenizer.init_args."

    def args_for(run: Path, steps: int) -> list[str]:
        return ["fit", "-c", str(REPO / "recipes" / "codec" / "vq_digits.yaml"),
                "--data.init_args.path", str(digits), "--data.init_args.build_embedded", "false",
                "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "8",
                "--data.init_args.max_valid_items", "8",
                tokenizer + "block_channels", "[8, 16, 16]", tokenizer + "norm_groups", "4",
                tokenizer + "latent_dim", "8", tokenizer + "codebook_size", "32",
                "--model.init_args.perceptual_network", str(tmp_path / "judge"),
                "--model.init_args.discriminator.init_args.channels", "8",
                "--model.init_args.adversarial_start_step", "2", "--model.init_args.num_logged_examples", "2",
                "--model.init_args.warmup_steps", "2", "--model.init_args.lr_decay_steps", "8",
                "--trainer.max_steps", str(steps), "--trainer.val_check_interval", "2",
                "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                "--trainer.default_root_dir", str(run), "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
                "--trainer.logger.init_args.save_dir", str(run), "--trainer.logger.init_args.name", "csv"]

    # 36 training images, 5 batches of 8 an epoch; the GAN from batch 2 on counts 2 steps a batch
    assert_resume_is_exact(args_for, tmp_path, total=14, stops=[4, 10])
