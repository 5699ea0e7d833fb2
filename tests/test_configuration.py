"""The configuration on its own: presets, typed sub-configs, saving and reading back, older config files."""
import json

import pytest
import torch

from configuration_reasoncd import (
    FUSION_TINY, PRESETS, QUESTION_FOLLOWING, SAM_TINY, ReasonCDConfig, ReasonCDFusionConfig, ReasonCDSamConfig,
)
from modeling_reasoncd import ReasonCDForChangeDetection


def test_the_paper_preset_is_the_papers_architecture():
    config = ReasonCDConfig.from_preset("reasoncd-7b")
    text, vision, sam, fusion = (config.text_config, config.vision_config, config.sam_config,
                                 config.feature_fusion_config)
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (4096, 32, 32005)
    assert (vision.hidden_size, vision.image_size, vision.patch_size) == (1024, 224, 14)
    assert config.image_seq_length == 256
    assert (sam.image_size, sam.encoder_embed_dim, sam.encoder_depth) == (1024, 1280, 32)
    assert (sam.embedding_grid, sam.low_res_mask_size) == (64, 256)
    assert config.use_feature_fusion and (fusion.resnet_depth, fusion.resnet_image_size) == (34, 1024)
    # Nothing beyond the paper is switched on.
    assert not config.seg_state_norm and not config.change_tokens and config.mask_conditioning == "sparse"
    assert config.answer_decision_loss_weight == 1.0 and config.other_change_bce_weight == 1.0


def test_tiny_preset_switches_on_the_question_following_options():
    config = ReasonCDConfig.from_preset("tiny")
    for key, value in QUESTION_FOLLOWING.items():
        assert getattr(config, key) == value, key
    assert all(getattr(config.sam_config, key) == value for key, value in SAM_TINY.items())
    assert all(getattr(config.feature_fusion_config, key) == value for key, value in FUSION_TINY.items())


def test_the_tiny_preset_decodes_masks_on_a_32_by_32_grid():
    """8-px SAM patches on the 256-px frame: the whole mask path works on 32 x 32 cells, the masks come at 128 x 128."""
    config = ReasonCDConfig.from_preset("tiny")
    model = ReasonCDForChangeDetection(config).eval()
    frame = torch.zeros(1, 3, SAM_TINY["image_size"], SAM_TINY["image_size"])
    with torch.no_grad():
        features = model.sam_image_encoder(frame)
        embedding = model.feature_fusion(features, features, frame, frame)
        masks = model.decode_masks(embedding, torch.zeros(1, config.text_config.hidden_size))
    assert features.shape[-2:] == embedding.shape[-2:] == (32, 32)
    assert masks.shape[-2:] == (128, 128) == (config.sam_config.low_res_mask_size,) * 2



def test_the_tiny_preset_shows_the_language_model_4_tokens_per_image():
    """56-px CLIP patches on the 112-px frame: 4 tokens per image, filled from CLIP's 2 x 2 grid, and the change
    tokens pooled to the same grid."""
    config = ReasonCDConfig.from_preset("tiny")
    assert config.image_seq_length == 4
    model = ReasonCDForChangeDetection(config).eval()
    with torch.no_grad():
        patches = model.vision_features(torch.zeros(2, 3, 112, 112))
        change = model._change_tokens(torch.zeros(2, config.sam_config.prompt_embed_dim, 32, 32))
    assert patches.shape[:2] == change.shape[:2] == (2, 4)

def test_sub_config_overrides_change_only_their_own_keys():
    config = ReasonCDConfig.from_preset("tiny", sam_config={"decoder_depth": 1}, use_feature_fusion=False)
    assert config.sam_config.decoder_depth == 1
    assert config.sam_config.image_size == SAM_TINY["image_size"]  # the rest of the preset's SAM stays
    assert not config.use_feature_fusion
    assert PRESETS["tiny"]["sam_config"]["decoder_depth"] == 2  # the preset table itself is untouched


def test_saved_config_reads_back_with_typed_sub_configs(tmp_path):
    config = ReasonCDConfig.from_preset("tiny", use_feature_fusion=False)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    # Sub-configs are saved as their sizes only, not PretrainedConfig's generic fields.
    assert saved["sam_config"]["model_type"] == "reasoncd_sam" and "id2label" not in saved["sam_config"]
    assert set(saved["feature_fusion_config"]) == {"model_type", *FUSION_TINY}
    loaded = ReasonCDConfig.from_pretrained(tmp_path)
    assert isinstance(loaded.sam_config, ReasonCDSamConfig)
    assert isinstance(loaded.feature_fusion_config, ReasonCDFusionConfig)
    assert loaded.sam_config.to_dict() == config.sam_config.to_dict()
    assert loaded.feature_fusion_config.to_dict() == config.feature_fusion_config.to_dict()
    assert loaded.use_feature_fusion is False


def test_config_files_from_before_the_typed_sub_configs_still_load(tmp_path):
    """Older checkpoints hold `sam_config` without the encoder's MLP ratio / eps and a `fusion_module` dict with an
    `enabled` switch; they read as the same architecture, with the same parameter names."""
    config = ReasonCDConfig.from_preset("tiny", use_feature_fusion=False)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["sam_config"] = {key: value for key, value in saved["sam_config"].items()
                           if key not in ("encoder_mlp_ratio", "encoder_layer_norm_eps", "model_type")}
    saved["fusion_module"] = {"enabled": False, **{key: value for key, value in saved.pop("feature_fusion_config").items()
                                                   if key != "model_type"}}
    del saved["use_feature_fusion"]
    (tmp_path / "config.json").write_text(json.dumps(saved))

    legacy = ReasonCDConfig.from_pretrained(tmp_path)
    assert legacy.use_feature_fusion is False
    assert legacy.sam_config.to_dict() == config.sam_config.to_dict()
    assert legacy.feature_fusion_config.to_dict() == config.feature_fusion_config.to_dict()
    names = {name: tuple(p.shape) for name, p in ReasonCDForChangeDetection(legacy).state_dict().items()}
    assert names == {name: tuple(p.shape) for name, p in ReasonCDForChangeDetection(config).state_dict().items()}


@pytest.mark.parametrize("overrides, message", [
    ({"image_seq_length": 10}, "image_seq_length=10 does not match"),
    ({"seg_hidden_state": "last"}, "only 'predicting'"),
    ({"mask_conditioning": "concat"}, "mask_conditioning='concat'"),
])
def test_inconsistent_values_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        ReasonCDConfig.from_preset("tiny", **overrides)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'.*'medium'.*'reasoncd-7b'.*'tiny'"):
        ReasonCDConfig.from_preset("huge")


def test_new_token_ids_follow_new_tokens_and_set_each_field():
    config = ReasonCDConfig.from_preset("tiny")
    assert config.new_token_ids == [config.t1_token_id, config.t2_token_id, config.p_start_token_id,
                                    config.p_end_token_id, config.seg_token_id] == [32000, 32001, 32002, 32003, 32004]
    config.new_token_ids = [7, 8, 9, 10, 11]
    assert (config.t1_token_id, config.seg_token_id) == (7, 11)
    saved = config.to_dict()
    assert "new_token_ids" not in saved and saved["p_end_token_id"] == 10
    with pytest.raises(ValueError, match=r"5 ids \(<T1>, <T2>, <p>, </p>, \[SEG\]\), got \[1, 2\]"):
        config.new_token_ids = [1, 2]
