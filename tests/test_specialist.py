"""The specialist baseline of bench.py baseline: trained briefly, predicted and scored like ReasonCD."""
import numpy as np
import pytest
import torch

from reasoncd.data.questions import says_absent
from reasoncd.data.samples import SEG, load_split, training_sample
from reasoncd.data.second import swapped_order_truth_path
from reasoncd.evaluation.scoring import score
from reasoncd.evaluation.specialist import SIDE, SpecialistUNet, croi_index, predict_specialist, train_specialist


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[dict]:
    from reasoncd.data.second import convert_second
    from reasoncd.data.synthetic import generate_second_layout

    root = tmp_path_factory.mktemp("second")
    generate_second_layout(root / "raw", 6, seed=5, progress=False)
    convert_second(root / "raw", root / "samples", seed=5, progress=False)
    return load_split(root / "samples", "train")


def test_the_network_is_conditioned_on_the_croi_at_every_level():
    torch.manual_seed(0)
    network = SpecialistUNet().eval()
    for film in network.film:  # a trained conditioning: scale and shift depend on the CRoI
        torch.nn.init.normal_(film.weight, std=0.5)
    pairs = torch.randn(1, 6, SIDE, SIDE).repeat(2, 1, 1, 1)
    with torch.no_grad():
        masks, presence = network(pairs, torch.tensor([0, 7]))
    assert masks.shape == (2, SIDE, SIDE) and presence.shape == (2,)
    assert not torch.allclose(masks[0], masks[1]) and not torch.allclose(presence[0], presence[1])


def test_training_prediction_and_scoring_follow_evals_format(samples):
    network, trained = train_specialist(samples, seconds=600, max_steps=3, seed=0)
    assert trained["steps"] == 3 and not network.training
    predictions = predict_specialist(network, samples)
    for sample, prediction in zip(samples, predictions):
        assert prediction["mask"].shape == (256, 256) and prediction["mask"].dtype == bool
        if not prediction["seg"]:  # decided absent: no map, and the words say so
            assert not prediction["mask"].any() and says_absent(prediction["text"])
        else:
            assert not says_absent(prediction["text"]) and SEG not in prediction["text"]
        assert (prediction["order_mask"] is not None) == (swapped_order_truth_path(sample) is not None)
    result = score(samples, predictions)
    assert result["order"]["n_questions"] > 0 and 0.0 <= result["fidelity_score"] <= 1.0
    assert croi_index(samples[0]) in range(18)


def test_the_training_sample_is_whole_pairs_in_file_order(samples):
    chosen = training_sample(samples, 5)
    pairs = [s["pair_id"] for s in chosen]
    assert len(chosen) >= 5 and pairs == sorted(pairs)
    last = pairs[-1]
    assert sum(s["pair_id"] == last for s in samples) == pairs.count(last)  # the last pair is whole
    assert training_sample(samples, 0) == [] and training_sample(samples, 5) == chosen
