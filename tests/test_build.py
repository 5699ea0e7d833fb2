"""build_reasoncd.py: reproducible tiny checkpoints, building from real-format components (LLaMA and CLIP folders,
segment-anything's .pth, a torchvision ResNet), refusing bad SAM files, and the 7B dry run's parameter counts."""
import os
import re
import subprocess
import sys
import time
from functools import partial

import pytest
import torch
from safetensors.torch import load_file, save_file
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn
from torchvision.models import resnet18
from transformers import (
    AutoModel,
    AutoProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
)

import build_reasoncd
from reasoncd import build
from configuration_reasoncd import SAM_TINY, ReasonCDConfig
from helpers import REPO_ROOT, llama_like_tokenizer, random_image, script_env, tiny_checkpoint

LLAMA_VOCAB = 32000


# --- the tiny preset is reproducible ----------------------------------------------------------------------------
def test_tiny_build_is_deterministic_per_seed(tmp_path_factory, tmp_path):
    first = tiny_checkpoint(tmp_path_factory, seed=0)
    assert build_reasoncd.main(["--preset", "tiny", "--seed", "0", "--output_dir", str(tmp_path / "again")]) == 0
    assert build_reasoncd.main(["--preset", "tiny", "--seed", "1", "--output_dir", str(tmp_path / "other")]) == 0
    again, other = tmp_path / "again", tmp_path / "other"
    assert (first / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()
    assert (first / "config.json").read_bytes() == (again / "config.json").read_bytes()
    weights = [load_file(str(folder / "model.safetensors")) for folder in (first, again, other)]
    assert weights[0].keys() == weights[1].keys() == weights[2].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    differing = [k for k in weights[0] if not torch.equal(weights[0][k], weights[2][k])]
    assert "language_model.model.embed_tokens.weight" in differing
    assert "sam_mask_decoder.iou_token.weight" in differing and len(differing) > len(weights[0]) // 3
    # No partial folders are left beside the outputs.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other"]


# --- building from real-format components -----------------------------------------------------------------------
def _randomise(module: nn.Module, seed: int) -> None:
    """Every parameter and float buffer random, so that a weight left at its initial value cannot pass as loaded."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            values = torch.rand(tensor.shape, generator=generator)
            tensor.copy_(values + 0.5 if name.endswith("running_var") else values - 0.5)


def _tiny_sam(sam_config: dict) -> Sam:
    """segment-anything's own modules at the `tiny` preset's sizes; its state dict has the official key names."""
    grid = sam_config["image_size"] // sam_config["patch_size"]
    dim = sam_config["prompt_embed_dim"]
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=sam_config["encoder_depth"], embed_dim=sam_config["encoder_embed_dim"],
            img_size=sam_config["image_size"], mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=sam_config["encoder_num_heads"], patch_size=sam_config["patch_size"], qkv_bias=True,
            use_rel_pos=True, global_attn_indexes=sam_config["encoder_global_attn_indexes"],
            window_size=sam_config["encoder_window_size"], out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid),
            input_image_size=(sam_config["image_size"], sam_config["image_size"]),
            mask_in_chans=sam_config["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=sam_config["num_multimask_outputs"],
            transformer=TwoWayTransformer(depth=sam_config["decoder_depth"], embedding_dim=dim,
                                          mlp_dim=sam_config["decoder_mlp_dim"],
                                          num_heads=sam_config["decoder_num_heads"]),
            transformer_dim=dim, iou_head_depth=sam_config["iou_head_depth"],
            iou_head_hidden_dim=sam_config["iou_head_hidden_dim"],
        ),
    )


CUSTOM_CLIP_MEAN = [0.5, 0.4, 0.3]
CUSTOM_CLIP_STD = [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    """Tiny components saved the way the real ones are distributed."""
    root = tmp_path_factory.mktemp("components")
    torch.manual_seed(0)
    llm_dir = root / "llama"
    llm = LlamaForCausalLM(LlamaConfig(
        vocab_size=LLAMA_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False,
    ))
    _randomise(llm, 1)
    llm.save_pretrained(llm_dir)
    llama_like_tokenizer(LLAMA_VOCAB).save_pretrained(llm_dir)

    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 112, "patch_size": 14, "projection_dim": 16}
    # The paper's CLIP (openai/clip-vit-large-patch14) is a full CLIPModel folder: text tower included.
    clip_dir = root / "clip"
    clip = CLIPModel(CLIPConfig(
        text_config={"vocab_size": 99, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "projection_dim": 16},
        vision_config=vision, projection_dim=16,
    ))
    _randomise(clip, 2)
    clip.save_pretrained(clip_dir)
    # Its processor centre-crops; the build must switch that off but keep the model's mean/std.
    CLIPImageProcessor(size={"shortest_edge": 112}, crop_size={"height": 112, "width": 112}, do_center_crop=True,
                       image_mean=CUSTOM_CLIP_MEAN, image_std=CUSTOM_CLIP_STD).save_pretrained(clip_dir)
    vision_dir = root / "clip_vision"
    clip_vision = CLIPVisionModel(CLIPVisionConfig(**vision))
    _randomise(clip_vision, 3)
    clip_vision.save_pretrained(vision_dir)

    sam = _tiny_sam(ReasonCDConfig.from_preset("tiny").sam_config.to_dict())
    _randomise(sam, 4)
    sam_state = sam.state_dict()
    assert {k.split(".")[0] for k in sam_state} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    sam_path = root / "sam_vit_t.pth"
    torch.save(sam_state, sam_path)

    resnet = resnet18(weights=None)
    _randomise(resnet, 5)
    resnet_state = {k: v.contiguous() for k, v in resnet.state_dict().items()}
    resnet_path = root / "resnet18.safetensors"
    save_file(resnet_state, str(resnet_path))
    return {
        "root": root, "llm": llm_dir, "llm_state": llm.state_dict(), "clip": clip_dir,
        "clip_state": clip.state_dict(), "clip_vision": vision_dir, "clip_vision_state": clip_vision.state_dict(),
        "sam": sam_path, "sam_state": sam_state, "resnet": resnet_path, "resnet_state": resnet_state,
    }


def _build_args(components, output_dir, *, vision="clip", sam=None):
    return ["--llm", str(components["llm"]), "--vision", str(components[vision]),
            "--sam", str(sam or components["sam"]), "--resnet", str(components["resnet"]),
            "--preset", "tiny", "--output_dir", str(output_dir)]


def _assert_part_equal(built: dict, source: dict, prefix: str = ""):
    """Every tensor of the built part equals the source's tensor of the same (prefixed) name."""
    assert built, "nothing to compare"
    for key, value in built.items():
        assert prefix + key in source, key
        assert torch.equal(value, source[prefix + key].to(value.dtype)), key


@pytest.mark.parametrize("vision", ["clip", "clip_vision"])
def test_build_from_real_format_components(components, tmp_path, vision):
    out = tmp_path / "reasoncd"
    assert build_reasoncd.main(_build_args(components, out, vision=vision)) == 0
    model, info = AutoModel.from_pretrained(out, trust_remote_code=True, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    config = model.config
    assert config.text_config.vocab_size == LLAMA_VOCAB + 5
    assert [config.t1_token_id, config.t2_token_id, config.p_start_token_id, config.p_end_token_id,
            config.seg_token_id] == list(range(LLAMA_VOCAB, LLAMA_VOCAB + 5))
    assert config.pad_token_id == 0 and config.bos_token_id == 1 and config.eos_token_id == 2
    tiny_sam = ReasonCDConfig.from_preset("tiny").sam_config.to_dict()
    read_back = config.sam_config.to_dict()  # sizes read back off the SAM weights
    assert {k: read_back[k] for k in SAM_TINY} == {k: tiny_sam[k] for k in SAM_TINY}
    assert config.image_seq_length == 64

    # Language model: old rows and all other weights as saved; the 5 new rows at the mean of the old rows.
    llm_state = components["llm_state"]
    built_llm = model.language_model.state_dict()
    assert built_llm.keys() == llm_state.keys()
    for key, value in built_llm.items():
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            assert value.shape == (LLAMA_VOCAB + 5, 64)
            assert torch.equal(value[:LLAMA_VOCAB], llm_state[key])
            mean = llm_state[key].mean(dim=0)
            torch.testing.assert_close(value[LLAMA_VOCAB:], mean.expand(5, -1), rtol=0, atol=1e-6)
        else:
            assert torch.equal(value, llm_state[key]), key

    source = components[f"{vision}_state"]
    # A full CLIPModel keeps its vision tower under `vision_model.`; a CLIPVisionModel is the tower itself.
    prefix = "vision_model." if vision == "clip" else ""
    _assert_part_equal(model.vision_tower.state_dict(), source, prefix)
    assert len(model.vision_tower.state_dict()) == len([k for k in source if k.startswith(prefix)])
    for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
        _assert_part_equal(getattr(model, f"sam_{part}").state_dict(), components["sam_state"], f"{part}.")
    resnet = {k: v for k, v in components["resnet_state"].items() if not k.startswith("fc.")}
    assert model.config.feature_fusion_config.resnet_base_width == 64  # the weights' width, not the tiny preset's
    built_resnet = model.feature_fusion.resnet_fpn.backbone.state_dict()
    assert built_resnet.keys() == resnet.keys()
    _assert_part_equal(built_resnet, resnet)

    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    assert len(processor.tokenizer) == LLAMA_VOCAB + 5
    assert processor.tokenizer.pad_token_id == 0
    clip_processor = processor.image_processor
    assert clip_processor.do_center_crop is False
    assert clip_processor.size == {"height": 112, "width": 112}
    if vision == "clip":
        assert list(clip_processor.image_mean) == CUSTOM_CLIP_MEAN and list(clip_processor.image_std) == CUSTOM_CLIP_STD
    assert processor.sam_image_size == 256 and processor.image_seq_length == 64

    # The assembled model runs: a teacher-forced step gives a finite loss.
    image = random_image(96, 128, seed=0)
    mask = image[..., 0] > 128
    inputs = processor(images_t1=image, images_t2=image[::-1].copy(), text="new buildings",
                       answers=["It's [SEG]."], masks=[mask])
    with torch.no_grad():
        loss = model.eval()(**inputs).loss
    assert torch.isfinite(loss) and loss > 0


def _fails_naming(components, tmp_path, sam_path, *fragments):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as error:
        build_reasoncd.main(_build_args(components, out, sam=sam_path))
    message = str(error.value.code)
    assert str(sam_path) in message
    for fragment in fragments:
        assert fragment in message
    assert not out.exists()
    return message


def test_sam_file_that_is_not_sam_is_refused(components, tmp_path):
    not_sam = tmp_path / "other_model.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, not_sam)
    _fails_naming(components, tmp_path, not_sam, "not a segment-anything checkpoint")
    text = tmp_path / "notes.txt"
    text.write_text("this is not a checkpoint\n")
    _fails_naming(components, tmp_path, text, "not a loadable tensor file")
    _fails_naming(components, tmp_path, tmp_path / "missing.pth", "no such file")


class _Payload:
    """Unpickling this object would create a folder: a stand-in for arbitrary code in a downloaded .pth."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.mkdir, (str(self.target),)


def test_sam_pickle_with_objects_is_refused_without_running_it(components, tmp_path):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "sam_vit_evil.pth"
    state = dict(components["sam_state"])
    state["image_encoder.extra"] = _Payload(marker)
    torch.save(state, evil)
    _fails_naming(components, tmp_path, evil, "not a loadable tensor file")
    assert not marker.exists()


def test_real_components_need_llm_vision_and_sam_together(components, tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        build_reasoncd.main(["--llm", str(components["llm"]), "--output_dir", str(tmp_path / "x")])
    assert error.value.code == 2
    assert "--llm, --vision and --sam together" in capsys.readouterr().err


# --- dry run of the paper's preset ------------------------------------------------------------------------------
LLAMA2_7B = 6_738_415_616  # LLaMA-2-7b with its 32,000-row embed_tokens and lm_head


def _llama2_7b_count(vocab: int) -> int:
    """LLaMA-2-7b's parameters from its shape: 32 layers of attention (4 x 4096^2) + SwiGLU MLP (3 x 4096 x 11008)
    + two RMSNorms, the final norm, embed_tokens and an untied lm_head."""
    hidden, inter, layers = 4096, 11008, 32
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    return layers * per_layer + hidden + 2 * vocab * hidden


def _run_measured(args):
    """Runs python with `args` in the repository; returns (returncode, stdout, stderr, seconds)."""
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, env=script_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    stdout, stderr = process.communicate(timeout=120)
    seconds = time.monotonic() - start
    return process.returncode, stdout, stderr, seconds


def test_fusion_is_switched_off_in_the_shared_option_group(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    build.add_option_arguments(parser)
    assert build.option_overrides(parser.parse_args([])) == {}
    off = parser.parse_args(["--no_fusion", "--mask_conditioning", "sparse"])
    assert build.option_overrides(off) == {"use_feature_fusion": False, "mask_conditioning": "sparse"}
    assert build.option_flags(build.option_overrides(off)) == "--no_fusion --mask_conditioning"
    with pytest.raises(SystemExit):
        build_reasoncd.main(["--no_fusion", "--resnet", "resnet34.pth", "--output_dir", "unused"])
    assert "--resnet loads the fusion module's ResNet, which --no_fusion removes" in capsys.readouterr().err


def test_dry_run_counts_the_papers_model_without_allocating_it(tmp_path):
    assert _llama2_7b_count(32000) == LLAMA2_7B
    expected_llm = LLAMA2_7B + 5 * 4096 * 2
    assert expected_llm == _llama2_7b_count(32005) == 6_738_456_576

    # Peak memory of the child: a 7.7-billion-parameter model in float32 would need about 31 GB.
    script = ("import resource, runpy, sys; sys.argv = ['build_reasoncd.py', '--preset', 'reasoncd-7b', "
              "'--dry_run']; sys.path.insert(0, '.')\n"
              "try:\n    runpy.run_path('build_reasoncd.py', run_name='__main__')\n"
              "finally:\n    print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
    code, stdout, stderr, seconds = _run_measured(["-c", script])
    assert code == 0, stderr[-2000:]
    assert seconds < 30
    peak_kb = int(re.search(r"PEAK_KB (\d+)", stderr).group(1))
    assert peak_kb < 3 * 1024 * 1024, f"dry run peaked at {peak_kb / 1024**2:.1f} GB"

    rows = {}
    for line in stdout.splitlines():
        match = re.fullmatch(r"(\w+)\s+([\d,]+)\s+([\d,]+)", line.strip())
        if match:
            rows[match[1]] = (int(match[2].replace(",", "")), int(match[3].replace(",", "")))
    components = ["vision_tower", "multi_modal_projector", "language_model", "text_hidden_fc",
                  "sam_image_encoder", "sam_prompt_encoder", "sam_mask_decoder", "feature_fusion"]
    assert list(rows) == components + ["total"]

    lora = 32 * 2 * 8 * (4096 + 4096)  # r=8 on q_proj and v_proj of 32 layers
    assert rows["language_model"] == (expected_llm, lora + 2 * 5 * 4096)
    # CLIP ViT-L/14 vision tower (embeddings, 24 layers, pre- and post-LayerNorm) is frozen.
    assert rows["vision_tower"] == (303_179_776, 0)
    assert rows["multi_modal_projector"] == (1024 * 4096 + 4096,) * 2
    assert rows["text_hidden_fc"] == (4096 * 4096 + 4096 + 4096 * 256 + 256,) * 2
    # SAM ViT-H as segment-anything's build_sam_vit_h counts it.
    with torch.device("meta"):
        from segment_anything import sam_model_registry

        sam = sam_model_registry["vit_h"]()
    counts = {name: sum(p.numel() for p in getattr(sam, name).parameters())
              for name in ("image_encoder", "prompt_encoder", "mask_decoder")}
    assert rows["sam_image_encoder"] == (counts["image_encoder"], 0)
    assert rows["sam_prompt_encoder"] == (counts["prompt_encoder"], 0)
    # The mask decoder trains but for SAM's IoU head and the hypernetworks of its three multi-mask outputs.
    decoder = sam.mask_decoder
    unused = sum(p.numel() for module in (decoder.iou_prediction_head, *decoder.output_hypernetworks_mlps[1:])
                 for p in module.parameters())
    assert rows["sam_mask_decoder"] == (counts["mask_decoder"], counts["mask_decoder"] - unused)
    # ResNet34 without its classifier + FPN (4 lateral 1x1 and 4 output 3x3 convolutions) + two channel
    # attentions + the FFN (two 1x1 convolutions, each with BatchNorm).
    resnet34_body = 21_797_672 - (512 * 1000 + 1000)
    fpn = sum(c * 256 + 256 for c in (64, 128, 256, 512)) + 4 * (256 * 256 * 9 + 256)
    per_image = 256 + 4 * 256
    attention = 2 * per_image * (per_image // 16) + 2 * (2 * per_image) * (2 * per_image // 16)
    ffn = 2 * per_image * 512 + 2 * 512 + 512 * 256 + 2 * 256
    assert rows["feature_fusion"] == (resnet34_body + fpn + attention + ffn,) * 2
    total = sum(rows[c][0] for c in components)
    trainable = sum(rows[c][1] for c in components)
    assert rows["total"] == (total, trainable)
    assert f"trainable share: {trainable / total:.2%}" in stdout


# --- what the build never touches -------------------------------------------------------------------------------
def test_refuses_folders_it_did_not_write_and_keeps_them_byte_for_byte(components, tmp_path, capsys):
    from helpers import precious_places, tree

    places = precious_places(tmp_path)
    for what, place in places.items():
        before = tree(place)
        assert build_reasoncd.main(["--preset", "tiny", "--output_dir", str(place)]) == 2, what
        error = capsys.readouterr().err
        assert error.startswith("error: ") and str(place) in error, (what, error)
        assert tree(place) == before, what
    # The folder holding the components it is built from: refused before minutes of loading.
    before = tree(components["root"])
    assert build_reasoncd.main(_build_args(components, components["root"])) == 2
    assert "holds this command's input" in capsys.readouterr().err
    assert tree(components["root"]) == before
    # --overwrite puts the checkpoint beside the user's file; a rebuild replaces its own files only.
    user = places["a folder holding a user's file"]
    for _ in range(2):
        assert build_reasoncd.main(["--preset", "tiny", "--output_dir", str(user), "--overwrite"]) == 0
    assert (user / "notes.txt").read_text() == "a week of field notes\n"
    assert AutoModel.from_pretrained(user, trust_remote_code=True) is not None
