"""reasoncd.training.recipes: what the command line leaves unset comes from the quickstart without --data and from
the paper with it; the quickstart keeps its data and run under the repository."""
from pathlib import Path

import pytest

from reasoncd.training.arguments import build_parser
from reasoncd.training.recipes import PAPER, QUICKSTART, apply_recipe

ROOT = Path("/somewhere/reasoncd")


def parsed(*argv: str):
    args = build_parser("train.py").parse_args(list(argv))
    apply_recipe(args, ROOT)
    return args


def test_the_quickstart_fills_in_its_values_under_the_repository():
    args = parsed()
    assert args.quickstart
    assert {key: getattr(args, key) for key in PAPER} == {key: QUICKSTART[key] for key in PAPER}
    assert args.output_dir == ROOT / "runs" / "quickstart" and args.synthetic_pairs == QUICKSTART["pairs"]
    assert args.lora_alpha == 2 * QUICKSTART["lora_rank"]


def test_with_data_the_papers_values_and_what_is_given_wins():
    args = parsed("--data", "data/bcdd", "--lora_rank", "12", "--no-full_embeddings", "--output_dir", "runs/r12")
    assert not args.quickstart
    assert (args.num_train_epochs, args.learning_rate, args.lora_targets) == (100, 5e-5, "q_proj,v_proj")
    assert (args.lora_rank, args.lora_alpha, args.full_embeddings) == (12, 24, False)
    assert args.output_dir == Path("runs/r12")
    assert parsed("--data", "d").output_dir == Path("runs") / "train"  # relative to where train.py runs
    assert parsed("--data", "d", "--lora_alpha", "16", "--lora_rank", "4").lora_alpha == 16
    assert parsed("--data", "d").augment == "none"  # the paper names no augmentation
    assert parsed("--data", "d", "--augment", "dihedral").augment == "dihedral"


def test_the_quickstarts_data_takes_its_conversion_options_on_request(tmp_path):
    from reasoncd.data.samples import load_split
    from reasoncd.training.recipes import prepare_quickstart_data

    plain = prepare_quickstart_data(tmp_path, 12, 0)
    counts = {split: len(load_split(plain, split)) for split in ("train", "test")}
    originals = {sample["pair_id"] for sample in load_split(plain, "train")}
    absent = sum(sample["kind"] == "absent" for sample in load_split(plain, "train"))
    opposite = prepare_quickstart_data(tmp_path, 12, 0, opposite_negatives_per_pair=1)
    assert opposite == plain  # the quickstart's own cache, rewritten for the new setting
    train = load_split(opposite, "train")
    assert len(load_split(opposite, "test")) == counts["test"]
    added = len(train) - counts["train"]
    assert added > 0 and sum(sample["kind"] == "absent" for sample in train) == absent + added
    # None keeps the quickstart's setting (train.py passes every flag, given or not); swapped pairs are added to
    # training only, and the opposite-direction negatives given again stay off unless asked for.
    swapped = prepare_quickstart_data(tmp_path, 12, 0, opposite_negatives_per_pair=None, swapped_training_pairs=True)
    pairs = {sample["pair_id"] for sample in load_split(swapped, "train")}
    assert pairs == originals | {f"swapped-{pair}" for pair in originals}
    assert len(load_split(swapped, "test")) == counts["test"]
    kept = [sample for sample in load_split(swapped, "train") if not sample["pair_id"].startswith("swapped-")]
    assert len(kept) == counts["train"] and sum(sample["kind"] == "absent" for sample in kept) == absent
    with pytest.raises(TypeError, match="unknown option"):
        prepare_quickstart_data(tmp_path, 12, 0, negatives_per_pair=2)
