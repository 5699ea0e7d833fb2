"""Assembling ReasonCD checkpoints: the random presets (`build_tiny`), a model from real LLaMA / CLIP / SAM / ResNet
components (`build_from_components`), the processor that fits a config, saving (`save_checkpoint`) and the parameter
report of a dry run. `build_reasoncd.py` is the command line over it."""

import re
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor, CLIPVisionModel

from configuration_reasoncd import ReasonCDConfig
from modeling_reasoncd import ReasonCDForChangeDetection
from processing_reasoncd import NEW_TOKENS, ReasonCDProcessor
from reasoncd.data.questions import croi_units
from reasoncd.io import OutputDir
from reasoncd.training.tokenizer import add_reasoncd_tokens, train_tiny_tokenizer

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SAM_PREFIXES = {"image_encoder.": "sam_image_encoder.", "prompt_encoder.": "sam_prompt_encoder.",
                "mask_decoder.": "sam_mask_decoder."}


def clip_image_processor(image_size: int, base: CLIPImageProcessor | None = None) -> CLIPImageProcessor:
    """CLIP preprocessing that resizes a whole tile to a square: no centre crop (it would cut changes off)."""
    kwargs = base.to_dict() if base is not None else {"image_mean": CLIP_MEAN, "image_std": CLIP_STD}
    kwargs = {k: v for k, v in kwargs.items() if k in ("image_mean", "image_std", "rescale_factor")}
    return CLIPImageProcessor(
        **kwargs, do_resize=True, size={"height": image_size, "width": image_size}, resample=3,
        do_center_crop=False, do_rescale=True, do_normalize=True, do_convert_rgb=True,
    )


def make_processor(config: ReasonCDConfig, tokenizer, image_processor=None) -> ReasonCDProcessor:
    return ReasonCDProcessor(
        image_processor=clip_image_processor(config.vision_config.image_size, image_processor),
        tokenizer=tokenizer,
        image_seq_length=config.image_seq_length,
        sam_image_size=config.sam_config.image_size,
        sam_pixel_mean=config.sam_config.pixel_mean,
        sam_pixel_std=config.sam_config.pixel_std,
        max_sequence_length=config.text_config.max_position_embeddings,
    )


def set_token_ids(config: ReasonCDConfig, tokenizer) -> None:
    config.new_token_ids = [tokenizer.convert_tokens_to_ids(t) for t in NEW_TOKENS]
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.text_config.vocab_size = len(tokenizer)


def save_checkpoint(model: ReasonCDForChangeDetection, processor: ReasonCDProcessor, output_dir: Path | OutputDir,
                    *, command: str = "build_reasoncd.py", overwrite: bool = False) -> None:
    """Writes weights (safetensors), config, remote code and processor; all or nothing. `output_dir` follows
    reasoncd.io as `command` (an OutputDir made earlier, or a path checked now)."""
    output = output_dir if isinstance(output_dir, OutputDir) else OutputDir(output_dir, command, overwrite=overwrite)
    model.config.register_for_auto_class()
    model.register_for_auto_class("AutoModel")
    processor.register_for_auto_class("AutoProcessor")
    try:
        with output.staged(needed=weight_bytes(model)) as staging:
            model.save_pretrained(staging)
            processor.save_pretrained(staging)
    finally:
        if output is not output_dir:
            output.release()


def weight_bytes(model) -> int:
    """What the model's weights take on disk as safetensors (tied weights counted once)."""
    tensors = {(t.data_ptr(), t.numel()): t for t in model.state_dict().values()}
    return sum(t.numel() * t.element_size() for t in tensors.values())


# --- tiny preset -------------------------------------------------------------------------------------------------
def build_tiny(seed: int, preset: str = "tiny", **config_overrides) -> tuple[ReasonCDForChangeDetection, ReasonCDProcessor]:
    """Random weights and our offline tokenizer, for `tiny` (and `medium`, for benchmarks)."""
    tokenizer = train_tiny_tokenizer(seed=seed)
    if preset == "tiny":  # its CRoI head names the changes of the question bank its tokenizer was trained on
        config_overrides.setdefault("croi_units", croi_units())
    config = ReasonCDConfig.from_preset(preset, **config_overrides)
    set_token_ids(config, tokenizer)
    torch.manual_seed(seed)
    model = ReasonCDForChangeDetection(config)
    return model, make_processor(config, tokenizer)


def make_seg_the_only_answer(model) -> None:
    """
    Rewrites a ReasonCD model in place so that its language model predicts `[SEG]` at every position: for tests
    and benchmarks that must run the mask path of an untrained model.

    Component 0 of the residual stream is made a constant +50 (every token embedding and every projected image
    token carry it, and no attention or MLP output writes to it); the final RMSNorm keeps its sign, and the output
    layer reads that component only for `[SEG]`: its logit is positive while every other logit is 0. A presence
    head, where the model has one, decides "present" for every question.
    """
    language_model = model.language_model
    with torch.no_grad():
        language_model.get_input_embeddings().weight[:, 0] = 50.0
        model.multi_modal_projector.weight[0] = 0.0
        model.multi_modal_projector.bias[0] = 50.0
        for layer in language_model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        head = language_model.get_output_embeddings().weight
        head.zero_()
        head[model.config.seg_token_id, 0] = 1.0
        if model.presence is not None:  # the presence head decides "present" for every question
            decision = model.presence.classifier[-1]
            decision.weight.zero_()
            decision.bias.fill_(10.0)
        if model.question_mask is not None:  # its mask's evidence must not overturn that
            model.question_mask.evidence_scale.zero_()
            model.question_mask.evidence_offset.zero_()
        if model.order_head is not None:  # nor the order head: every question holds in either order
            model.order_head.classifier[-1].weight.zero_()
            model.order_head.bias.weight.zero_()
            model.order_head.bias.bias.fill_(10.0)


# --- real components -------------------------------------------------------------------------------------------
def load_sam_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """SAM's official `sam_vit_*.pth` (tensors only: `weights_only=True`) or a safetensors file."""
    if not path.is_file():
        raise SystemExit(f"--sam {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or pickled-object file: say which and why
        raise SystemExit(f"--sam {path}: not a loadable tensor file ({type(error).__name__}: {error})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or "image_encoder.patch_embed.proj.weight" not in state:
        raise SystemExit(
            f"--sam {path}: not a segment-anything checkpoint (no 'image_encoder.patch_embed.proj.weight'); "
            "expected sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth"
        )
    return state


def sam_config_from_state_dict(state: dict[str, torch.Tensor]) -> dict:
    """Reads SAM's sizes off its weights (the official files carry no config)."""
    patch = state["image_encoder.patch_embed.proj.weight"]
    embed_dim, patch_size = patch.shape[0], patch.shape[-1]
    grid = state["image_encoder.pos_embed"].shape[1]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k)))
    global_blocks, window = [], None
    head_dim = state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
    for i in range(depth):
        span = (state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] + 1) // 2
        if span == grid:
            global_blocks.append(i)
        else:
            window = span
    decoder_depth = 1 + max(int(m.group(1)) for k in state
                            if (m := re.match(r"mask_decoder\.transformer\.layers\.(\d+)\.", k)))
    iou_layers = sorted({int(m.group(1)) for k in state
                         if (m := re.match(r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.", k))})
    return {
        "image_size": grid * patch_size,
        "patch_size": patch_size,
        "encoder_embed_dim": embed_dim,
        "encoder_depth": depth,
        "encoder_num_heads": embed_dim // head_dim,
        "encoder_global_attn_indexes": global_blocks,
        "encoder_window_size": window or grid,
        "prompt_embed_dim": state["image_encoder.neck.0.weight"].shape[0],
        "mask_in_chans": state["prompt_encoder.mask_downscaling.0.weight"].shape[0] * 4,
        "decoder_depth": decoder_depth,
        "decoder_mlp_dim": state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
        "iou_head_depth": len(iou_layers),
        "iou_head_hidden_dim": state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
        "num_multimask_outputs": state["mask_decoder.mask_tokens.weight"].shape[0] - 1,
    }


def load_resnet_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SystemExit(f"--resnet {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def init_new_token_rows(language_model, num_new: int) -> None:
    """New rows of embed_tokens / lm_head start at the mean of the existing rows (not random noise)."""
    for matrix in (language_model.get_input_embeddings().weight, language_model.get_output_embeddings().weight):
        with torch.no_grad():
            matrix[-num_new:] = matrix[:-num_new].mean(dim=0, keepdim=True)


def build_from_components(args, overrides: dict) -> tuple[ReasonCDForChangeDetection, ReasonCDProcessor]:
    tokenizer = AutoTokenizer.from_pretrained(args.llm)
    old_vocab = len(tokenizer)
    add_reasoncd_tokens(tokenizer)
    sam_state = load_sam_state_dict(Path(args.sam))
    sam_config = sam_config_from_state_dict(sam_state)
    vision_config = AutoConfig.from_pretrained(args.vision)
    vision_config = getattr(vision_config, "vision_config", None) or vision_config  # a full CLIP folder
    fusion_sizes = {"resnet_image_size": sam_config["image_size"]}
    resnet = None
    if args.resnet:
        resnet = {k: v for k, v in load_resnet_state_dict(Path(args.resnet)).items() if not k.startswith("fc.")}
        if "conv1.weight" in resnet:  # a preset may narrow its ResNet (tiny); pretrained weights bring their width
            fusion_sizes["resnet_base_width"] = int(resnet["conv1.weight"].shape[0])
    config = ReasonCDConfig.from_preset(
        args.preset,
        text_config=AutoConfig.from_pretrained(args.llm),
        vision_config=vision_config,
        sam_config=sam_config,
        **{key: value for key, value in overrides.items() if key != "feature_fusion_config"},
        feature_fusion_config={**fusion_sizes, **overrides.get("feature_fusion_config", {})},
    )
    set_token_ids(config, tokenizer)

    # Build from config first (post_init initialises everything), then load the pretrained parts on top.
    torch.manual_seed(args.seed)
    model = ReasonCDForChangeDetection(config)
    language_model = AutoModelForCausalLM.from_pretrained(args.llm, dtype=torch.float32)
    language_model.resize_token_embeddings(len(tokenizer))
    init_new_token_rows(language_model, len(tokenizer) - old_vocab)
    _load_exact(model.language_model, language_model.state_dict(), "--llm")
    _load_exact(model.vision_tower, CLIPVisionModel.from_pretrained(args.vision).state_dict(), "--vision")
    for source, target in SAM_PREFIXES.items():
        part = {k[len(source):]: v for k, v in sam_state.items() if k.startswith(source)}
        _load_exact(getattr(model, target.rstrip(".")), part, "--sam")
    if resnet is not None:
        if not config.use_feature_fusion:
            raise SystemExit("--resnet given but the fusion module is disabled in this preset")
        _load_exact(model.feature_fusion.resnet_fpn.backbone, resnet, "--resnet")
    try:
        base_processor = CLIPImageProcessor.from_pretrained(args.vision)
    except OSError:
        base_processor = None
    return model, make_processor(config, tokenizer, base_processor)


def _load_exact(module: nn.Module, state: dict, flag: str) -> None:
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise SystemExit(f"{flag}: weights do not fit the model: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")


# --- dry run ---------------------------------------------------------------------------------------------------
def parameter_report(config: ReasonCDConfig, lora_rank: int = 8) -> list[tuple[str, int, int]]:
    """(component, parameters, trainable) on the meta device; trainable follows the paper's recipe."""
    with torch.device("meta"):
        model = ReasonCDForChangeDetection(config)
    rows = []
    new_tokens = len(NEW_TOKENS)
    hidden = config.text_config.hidden_size
    for name, module in model.named_children():
        count = sum(p.numel() for p in module.parameters())
        if name in model.trainable_module_names:  # trained in full, but for the parts no loss reaches
            trainable = count - sum(p.numel() for u in model.unused_module_names if u.startswith(f"{name}.")
                                    for p in model.get_submodule(u).parameters())
        elif name == "language_model":
            lora = sum(lora_rank * (m.in_features + m.out_features) for n, m in module.named_modules()
                       if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in ("q_proj", "v_proj"))
            trainable = lora + 2 * new_tokens * hidden  # LoRA + new rows of embed_tokens and lm_head
        else:
            trainable = 0
        rows.append((name, count, trainable))
    return rows


def print_report(rows, lora_rank: int) -> None:
    print(f"{'component':<24}{'parameters':>16}{'trainable':>16}")
    for name, count, trainable in rows:
        print(f"{name:<24}{count:>16,}{trainable:>16,}")
    total, trainable = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{'total':<24}{total:>16,}{trainable:>16,}")
    print(f"trainable share: {trainable / total:.2%} (LoRA r={lora_rank} on q_proj/v_proj of the language model)")


# --- the architecture and loss options, as command-line flags (build_reasoncd.py and train.py) ---
ARCHITECTURE_OPTIONS = ("use_feature_fusion", "seg_state_norm", "mask_conditioning", "change_tokens", "presence_head",
                        "question_mask", "presence_reads_croi", "fusion_film", "croi_plan", "land_cover_head",
                        "order_head", "order_head_pooling", "order_head_reads", "land_cover_reads",
                        "presence_reads_land_cover")
# Loss weights and the token dropouts: they shape training only, so any model may change them.
TRAINING_OPTIONS = ("other_change_bce_weight", "answer_decision_loss_weight", "presence_loss_weight",
                    "question_mask_loss_weight", "croi_loss_weight", "order_loss_weight", "order_presence_loss_weight",
                    "order_head_loss_weight", "question_token_dropout", "image_token_dropout", "scheduled_sampling",
                    "land_cover_loss_weight")
# The flag of an option whose name on the command line is not the config field's.
OPTION_FLAGS = {"use_feature_fusion": "--no_fusion", "land_cover_classes": "--land_cover_head"}


def loss_weight(text: str) -> float:
    """An argparse type: a finite weight of at least 0."""
    import argparse
    import math

    value = float(text)
    if not (math.isfinite(value) and value >= 0.0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a weight of at least 0")
    return value


def probability(text: str) -> float:
    """An argparse type: a probability in [0, 1]."""
    import argparse

    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability in [0, 1]")
    return value


def dropout_probability(text: str) -> float:
    """An argparse type: a probability in [0, 1) (a dropout of 1 would leave nothing to read)."""
    import argparse

    value = probability(text)
    if value == 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability in [0, 1)")
    return value


def add_option_arguments(parser) -> None:
    """The fusion module switch (the paper's ablation) and the config options beyond the paper (ReasonCDConfig's
    docstring and the README say what each does). Unset flags keep the preset's value: the options beyond the paper
    are off in `reasoncd-7b` and `medium`, on in `tiny`."""
    import argparse

    from configuration_reasoncd import (LAND_COVER_READINGS, MASK_CONDITIONINGS, ORDER_HEAD_POOLINGS,
                                        ORDER_HEAD_READINGS)

    group = parser.add_argument_group("architecture and loss options (default: the preset's)")
    group.add_argument("--no_fusion", dest="use_feature_fusion", action="store_false", default=None,
                       help="the paper's ablation: SAM features of T1 and T2 concatenated, no ResNet-FPN fusion")
    group.add_argument("--seg_state_norm", action=argparse.BooleanOptionalAction, default=None,
                       help="standardise the [SEG] state before the mask path reads it")
    group.add_argument("--mask_conditioning", choices=MASK_CONDITIONINGS,
                       help="sparse: the paper's prompt only; film: the [SEG] state also scales and shifts the "
                       "image embedding's channels")
    group.add_argument("--change_tokens", action=argparse.BooleanOptionalAction, default=None,
                       help="add the fusion module's change embedding to the later image's tokens")
    group.add_argument("--other_change_bce_weight", type=loss_weight,
                       help="BCE weight of pixels that changed for another question about the pair but not this one")
    group.add_argument("--answer_decision_loss_weight", type=loss_weight,
                       help="CE weight of an answer's first two (present/absent) tokens")
    group.add_argument("--presence_head", action=argparse.BooleanOptionalAction, default=None,
                       help="a presence decision learned on every question, which the answer follows")
    group.add_argument("--presence_loss_weight", type=loss_weight, help="weight of the presence head's loss")
    group.add_argument("--question_mask", action=argparse.BooleanOptionalAction, default=None,
                       help="every question, absent ones included, also gets a mask from its state at </p>, "
                       "trained toward its truth (empty when absent); the presence decision reads its evidence")
    group.add_argument("--question_mask_loss_weight", type=loss_weight, help="weight of the question mask's loss")
    group.add_argument("--croi_loss_weight", type=loss_weight,
                       help="weight of the CRoI head's loss (0: the state at </p> is not taught what was asked)")
    group.add_argument("--presence_reads_croi", action=argparse.BooleanOptionalAction, default=None,
                       help="the presence decision and the question mask read the CRoI head's probabilities instead "
                       "of the state at </p> (what was asked, not its wording)")
    group.add_argument("--presence_reads_land_cover", action=argparse.BooleanOptionalAction, default=None,
                       help="the presence decision also reads a map composed from the land-cover head (needs "
                       "--land_cover_head) and the CRoI head's units: where an asked class appeared or vanished")
    group.add_argument("--fusion_film", action=argparse.BooleanOptionalAction, default=None,
                       help="each question also scales and shifts both dates' features inside the fusion module "
                       "(SAM's and every FPN level's) before they are fused")
    group.add_argument("--croi_plan", action=argparse.BooleanOptionalAction, default=None,
                       help="the units the CRoI head names are added to every token after </p>, so that a long "
                       "answer keeps naming the change the question was read as")
    group.add_argument("--order_loss_weight", type=loss_weight,
                       help="weight of a mask decoded for each increase or decrease question with T1 and T2 swapped, "
                       "trained toward the opposite direction's truth (0: off)")
    group.add_argument("--order_presence_loss_weight", type=loss_weight,
                       help="weight of the presence decision (and question mask) of each increase or decrease "
                       "question read with T1 and T2 swapped, trained toward the opposite direction's truth (0: off)")
    group.add_argument("--order_head", action=argparse.BooleanOptionalAction, default=None,
                       help="a decision of its own on whether the asked change holds in the order the dates are given, "
                       "learned from each question in both orders; a question is present where it and the presence "
                       "decision agree")
    group.add_argument("--order_head_loss_weight", type=loss_weight, help="weight of the order head's loss")
    group.add_argument("--order_head_pooling", choices=ORDER_HEAD_POOLINGS,
                       help="where the order head reads each order of the pair: the whole image, or inside the "
                       "question's own mask (needs --question_mask)")
    group.add_argument("--order_head_reads", choices=ORDER_HEAD_READINGS,
                       help="what the order head compares: the pair fused in both orders, the later date's own "
                       "features against the earlier's (needs the fusion module), or the land-cover head's reading of "
                       "each date (needs --land_cover_reads dates)")
    group.add_argument("--image_token_dropout", type=dropout_probability,
                       help="in training, each image token reaches the language model as zeros with this probability")
    group.add_argument("--question_token_dropout", type=dropout_probability,
                       help="in training, replace each token of the question with a random ordinary token with this "
                       "probability (never the whole question)")
    group.add_argument("--land_cover_head", action=argparse.BooleanOptionalAction, default=None,
                       help="a head on the change embedding trained to name each changed pixel's land cover at T1 and "
                       "at T2, from SECOND-style label1/label2 maps beside the images (where a data set has them)")
    group.add_argument("--land_cover_reads", choices=LAND_COVER_READINGS,
                       help="what the land-cover head reads: the fused change embedding, or each date's own features "
                       "(naming that date's class of each changed pixel; needs the fusion module)")
    group.add_argument("--land_cover_loss_weight", type=loss_weight, help="weight of the land-cover head's loss")
    group.add_argument("--scheduled_sampling", type=probability,
                       help="in training, replace each answer token the model predicts wrongly by its prediction with "
                       "this probability, as the language model reads it (a forward pass more per step)")


def option_flags(names) -> str:
    """The command-line flags of config options, for messages."""
    return " ".join(OPTION_FLAGS.get(name, f"--{name}") for name in names)


def option_overrides(args, names=ARCHITECTURE_OPTIONS + TRAINING_OPTIONS) -> dict:
    """The options given on the command line, as config overrides. Switching the presence head off switches off
    the question mask that feeds it, unless `--question_mask` is given too (which the config then refuses)."""
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if "land_cover_head" in overrides:  # the flag stands for the config's class list: SECOND's classes, or none
        from reasoncd.data.questions import CLASSES

        overrides["land_cover_classes"] = list(CLASSES) if overrides.pop("land_cover_head") else []
    if overrides.get("presence_head") is False and "question_mask" in names:
        overrides.setdefault("question_mask", False)
    return overrides

