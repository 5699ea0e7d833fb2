"""reasoncd.training.feature_cache: cached frozen features equal the encoders' outputs, and a changed encoder gets a
new namespace."""
import pytest
import torch

from reasoncd.build import build_tiny
from reasoncd.data.samples import load_split
from reasoncd.training.dataset import ReasonCDCollator
from reasoncd.training.feature_cache import FrozenFeatureCache, image_keys


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(seed=0)


def test_feature_cache_hits_and_matches_the_encoders(tiny, samples_dir, tmp_path):
    model, processor = tiny
    model.eval()
    first_of_pair = {}
    for sample in load_split(samples_dir, "train"):
        first_of_pair.setdefault(sample["pair_id"], sample)
    samples = list(first_of_pair.values())[:3]  # three different pairs: six images
    batch = ReasonCDCollator(processor)(samples)
    keys = image_keys(batch)
    cache = FrozenFeatureCache(model, tmp_path / "cache")
    first = cache.frozen_features(model, batch, keys)
    assert (cache.hits, cache.misses) == (0, 6)
    second = cache.frozen_features(model, batch, keys)
    assert cache.hits == 6
    with torch.no_grad():
        direct = model.encode_frozen(batch["pixel_values_t1"], batch["pixel_values_t2"],
                                     batch["sam_pixel_values_t1"], batch["sam_pixel_values_t2"])
    for name in ("vision_features_t1", "vision_features_t2", "sam_features_t1", "sam_features_t2"):
        torch.testing.assert_close(second[name], direct[name])
        torch.testing.assert_close(first[name], direct[name])
    # a new cache over the same folder reads the disk entries; changing an encoder changes the namespace
    assert FrozenFeatureCache(model, tmp_path / "cache").fingerprint == cache.fingerprint
    with torch.no_grad():
        model.sam_image_encoder.neck[0].weight.mul_(1.01)
    assert FrozenFeatureCache(model, tmp_path / "cache").fingerprint != cache.fingerprint
    with torch.no_grad():
        model.sam_image_encoder.neck[0].weight.div_(1.01)


def test_an_images_cached_features_do_not_depend_on_the_batch_that_first_met_it(tiny, samples_dir):
    """A resumed run meets an image in another batch than the run before the kill: its cached features must be the
    same bits (the tiny preset's CLIP rounds differently with the batch size)."""
    model, processor = tiny
    model.eval()
    first_of_pair = {}
    for sample in load_split(samples_dir, "train"):
        first_of_pair.setdefault(sample["pair_id"], sample)
    samples = list(first_of_pair.values())[:3]
    together = ReasonCDCollator(processor)(samples)
    with torch.no_grad():  # the premise: batched encoding is not bitwise that of single images here
        batched = model.vision_features(together["pixel_values_t1"])
        single = torch.cat([model.vision_features(together["pixel_values_t1"][i : i + 1]) for i in range(3)])
    assert not torch.equal(batched, single)
    met_together = FrozenFeatureCache(model).frozen_features(model, together, image_keys(together))
    cache = FrozenFeatureCache(model)
    for sample in samples:  # the same images, first met one pair at a time
        alone = ReasonCDCollator(processor)([sample])
        cache.frozen_features(model, alone, image_keys(alone))
    met_alone = cache.frozen_features(model, together, image_keys(together))
    assert cache.hits == 6
    for name in ("vision_features_t1", "vision_features_t2", "sam_features_t1", "sam_features_t2"):
        assert torch.equal(met_alone[name], met_together[name]), name
