"""ReasonCD configuration.

A ReasonCD model is a CLIP vision tower, a causal language model, a SAM image encoder / prompt encoder / mask
decoder and a multi-scale feature fusion module. Each part has its own typed config: `text_config` and
`vision_config` are transformers' own, `sam_config` is a [`ReasonCDSamConfig`] and `feature_fusion_config` a
[`ReasonCDFusionConfig`] (not `fusion_config`: transformers reads that name for its kernel fusions). Every size
the modeling code needs is read from them.
"""

import copy
import inspect
import math

from transformers import AutoConfig, CLIPVisionConfig, LlamaConfig, PretrainedConfig


class _SizesConfig(PretrainedConfig):
    """A sub-config of plain sizes: saved as its own `__init__` arguments only, without PretrainedConfig's
    generic fields (labels, output flags), which mean nothing for SAM or the fusion module."""

    def to_dict(self) -> dict:
        fields = [name for name, parameter in inspect.signature(type(self).__init__).parameters.items()
                  if name != "self" and parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        # transformers removes the version from nested configs itself.
        return {"model_type": self.model_type, "transformers_version": self.transformers_version,
                **{name: copy.deepcopy(getattr(self, name)) for name in fields}}


class ReasonCDSamConfig(_SizesConfig):
    r"""
    SAM's image encoder, prompt encoder and mask decoder sizes, named as segment-anything's `build_sam` names them.
    The defaults are SAM ViT-H, the paper's image encoder.

    Args:
        image_size (`int`): side of SAM's square input frame (1024 for the official checkpoints).
        patch_size (`int`): the image encoder's patch size; the embedding grid is `image_size / patch_size`.
        encoder_embed_dim, encoder_depth, encoder_num_heads (`int`): the ViT image encoder.
        encoder_global_attn_indexes (`list[int]`): encoder blocks with global (not windowed) attention.
        encoder_window_size (`int`): side of the other blocks' attention windows.
        encoder_mlp_ratio (`float`), encoder_layer_norm_eps (`float`): the ViT blocks' MLP width and LayerNorm eps.
        prompt_embed_dim (`int`): channels of the image embedding, the prompts and the mask decoder.
        mask_in_chans (`int`): hidden channels of the prompt encoder's mask input branch.
        decoder_depth, decoder_mlp_dim, decoder_num_heads (`int`): the mask decoder's two-way transformer.
        iou_head_depth, iou_head_hidden_dim (`int`): the mask decoder's IoU head (kept so official weights load).
        num_multimask_outputs (`int`): masks per prompt besides the single-mask output.
        pixel_mean, pixel_std (`list[float]`): per-channel statistics for 0..255 pixels.
    """

    model_type = "reasoncd_sam"

    # SAM's mask decoder upsamples its image embedding twice by 2 (`output_upscaling`): low-res masks are 4x the grid.
    mask_upscale = 4

    def __init__(
        self,
        image_size=1024,
        patch_size=16,
        encoder_embed_dim=1280,
        encoder_depth=32,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(7, 15, 23, 31),
        encoder_window_size=14,
        encoder_mlp_ratio=4.0,
        encoder_layer_norm_eps=1e-6,
        prompt_embed_dim=256,
        mask_in_chans=16,
        decoder_depth=2,
        decoder_mlp_dim=2048,
        decoder_num_heads=8,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
        num_multimask_outputs=3,
        # segment-anything normalises 0..255 pixels with ImageNet statistics.
        pixel_mean=(123.675, 116.28, 103.53),
        pixel_std=(58.395, 57.12, 57.375),
        **kwargs,
    ):
        self.image_size = image_size
        self.patch_size = patch_size
        self.encoder_embed_dim = encoder_embed_dim
        self.encoder_depth = encoder_depth
        self.encoder_num_heads = encoder_num_heads
        self.encoder_global_attn_indexes = list(encoder_global_attn_indexes)
        self.encoder_window_size = encoder_window_size
        self.encoder_mlp_ratio = encoder_mlp_ratio
        self.encoder_layer_norm_eps = encoder_layer_norm_eps
        self.prompt_embed_dim = prompt_embed_dim
        self.mask_in_chans = mask_in_chans
        self.decoder_depth = decoder_depth
        self.decoder_mlp_dim = decoder_mlp_dim
        self.decoder_num_heads = decoder_num_heads
        self.iou_head_depth = iou_head_depth
        self.iou_head_hidden_dim = iou_head_hidden_dim
        self.num_multimask_outputs = num_multimask_outputs
        self.pixel_mean = list(pixel_mean)
        self.pixel_std = list(pixel_std)
        super().__init__(**kwargs)

    @property
    def embedding_grid(self) -> int:
        """Side of the image embedding (64 for SAM at 1024 px)."""
        return self.image_size // self.patch_size

    @property
    def low_res_mask_size(self) -> int:
        """Side of the mask decoder's output (256 for SAM at 1024 px)."""
        return self.mask_upscale * self.embedding_grid


class ReasonCDFusionConfig(_SizesConfig):
    r"""
    The paper's Multi-scale Feature Fusion module: a torchvision ResNet with an FPN over its four stages, run on the
    SAM-preprocessed image; the defaults are the paper's ResNet34. Whether the module is used at all is the top-level
    `ReasonCDConfig.use_feature_fusion`.

    Args:
        resnet_depth (`int`): 18 or 34.
        resnet_base_width (`int`): channels of the ResNet's stem and first stage, doubled at each later stage. 64
            is torchvision's ResNet, whose ImageNet weights load; a smaller width narrows every stage alike (an
            option beyond the paper, for models trained from scratch on little data).
        resnet_image_size (`int`): side the SAM-preprocessed image is resized to for the ResNet.
        fpn_channels (`int`): channels of each FPN level.
        attention_reduction (`int`): channel-attention bottleneck ratio.
        ffn_hidden_dim (`int`): hidden channels of the convolutional feed-forward that outputs the mask decoder's
            image embedding.
    """

    model_type = "reasoncd_fusion"

    # The FPN has one level per ResNet stage.
    fpn_levels = 4

    def __init__(self, resnet_depth=34, resnet_base_width=64, resnet_image_size=1024, fpn_channels=256,
                 attention_reduction=16, ffn_hidden_dim=512, **kwargs):
        self.resnet_depth = resnet_depth
        self.resnet_base_width = resnet_base_width
        self.resnet_image_size = resnet_image_size
        self.fpn_channels = fpn_channels
        self.attention_reduction = attention_reduction
        self.ffn_hidden_dim = ffn_hidden_dim
        super().__init__(**kwargs)


def _typed(value, config_class):
    """A sub-config from a dict (as read from config.json), a config, or None (the defaults)."""
    if isinstance(value, config_class):
        return value
    value = dict(value or {})
    for key in ("model_type", "transformers_version"):
        value.pop(key, None)
    return config_class(**value)


# The sizes the tiny preset changes (the defaults are the paper's SAM ViT-H and ResNet34).
SAM_TINY = {
    "image_size": 256,
    # 8-px patches: a 32 x 32 embedding grid (SAM's 16-px patches give 16 x 16 at this size), so the mask is
    # decoded at 128 x 128 and a 20-px building spans several cells instead of about one.
    "patch_size": 8,
    "encoder_embed_dim": 64,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
    "encoder_window_size": 8,
    "prompt_embed_dim": 64,
    "decoder_depth": 2,
    "decoder_mlp_dim": 256,
    "decoder_num_heads": 4,
    "iou_head_hidden_dim": 64,
}
FUSION_TINY = {
    "resnet_depth": 18,
    # A quarter of torchvision's width (16-128 channels, 0.7 M parameters instead of 11.2 M): trained from scratch on
    # a few hundred pairs, the narrow one scored as well over two seeds and a training step costs about a fifth
    # less (README, "Experiments 7").
    "resnet_base_width": 16,
    "resnet_image_size": 128,
    "fpn_channels": 32,
    "attention_reduction": 8,
    "ffn_hidden_dim": 128,
}

# How the [SEG] state conditions the mask decoder: the paper's sparse prompt, or that plus FiLM of the image embedding.
MASK_CONDITIONINGS = ("sparse", "film")
# Where the order head pools the fused pair: over the whole image, or inside the question's own mask.
ORDER_HEAD_POOLINGS = ("image", "question_mask")
# What the order head compares: the pair fused in both orders, each date's own features before the fusion, or
# the land-cover head's reading of each date.
ORDER_HEAD_READINGS = ("fused", "dates", "land_cover")
# What the land-cover head names each date's cover from: the fused change embedding, or each date's own features.
LAND_COVER_READINGS = ("fused", "dates")

# LLaMA-2's tokenizer has 32,000 entries; the five new tokens follow in this order.
NEW_TOKENS = ("<T1>", "<T2>", "<p>", "</p>", "[SEG]")
# The config fields that hold their ids, in the same order (`ReasonCDConfig.new_token_ids`).
NEW_TOKEN_ID_FIELDS = ("t1_token_id", "t2_token_id", "p_start_token_id", "p_end_token_id", "seg_token_id")


class ReasonCDConfig(PretrainedConfig):
    r"""
    Configuration of [`ReasonCDForChangeDetection`].

    Args:
        text_config (`dict` or `PretrainedConfig`, *optional*): the causal language model (LLaMA by default; any
            model `AutoModelForCausalLM` can build).
        vision_config (`dict` or `PretrainedConfig`, *optional*): the CLIP vision tower.
        sam_config (`dict` or [`ReasonCDSamConfig`], *optional*): SAM's sizes (default: ViT-H).
        feature_fusion_config (`dict` or [`ReasonCDFusionConfig`], *optional*): the fusion module's sizes (default:
            the paper's ResNet34 + FPN).
        use_feature_fusion (`bool`): the paper's Multi-scale Feature Fusion module; False gives the paper's ablation
            (SAM features of T1 and T2 concatenated, then the FFN).
        vision_feature_layer (`int`): CLIP hidden layer used for the image tokens (-2: the penultimate one).
        image_seq_length (`int`): image tokens per image, (image_size / patch_size)^2 of the vision tower.
        t1_token_id, t2_token_id, p_start_token_id, p_end_token_id, seg_token_id (`int`): the new tokens.
        pad_token_id, bos_token_id, eos_token_id (`int`): LLaMA's `<unk>` (used as padding), `<s>`, `</s>`.
        seg_hidden_state (`str`): which hidden state prompts the mask decoder; only `"predicting"` (the last-layer
            state of the position whose next token is `[SEG]`, LISA's convention) is implemented.
        ce_loss_weight, bce_loss_weight, dice_loss_weight (`float`): weights of the three loss terms.
        seg_token_loss_weight (`float`): CE weight of the `[SEG]` class for samples whose greedy prediction misses
            a `[SEG]` that the label has.
        bce_pos_weight (`float`): weight of the (rare) change class in the mask BCE.

        Options beyond the paper (the paper's values are the defaults and the `reasoncd-7b` preset's):
        seg_state_norm (`bool`): standardise the `[SEG]` state per dimension (running statistics) before the mask
            path reads it, so the part that differs between questions is not swamped by what all states share.
        mask_conditioning (`str`): `"sparse"` (the paper: the projected `[SEG]` state is SAM's sparse prompt) or
            `"film"` (also scale and shift each channel of the fused image embedding by the `[SEG]` state).
        other_change_bce_weight (`float`): BCE weight of pixels that changed for another question about the same
            pair, or for another target of the same answer, but not for this one (the pixels a question-blind mask
            gets wrong); 1.0 weighs them as any other.
        change_tokens (`bool`): add the fused change embedding of the fusion module, pooled to CLIP's patch grid
            and projected, to the later image's tokens, so the language model sees what changed (and decides
            whether the change of interest is there) with the features the mask path learns.
        answer_decision_loss_weight (`float`): CE weight of an answer's first two tokens, where the model decides
            between a present change ("It's the ...", then `[SEG]`) and an absent one ("There is no change ...").
        presence_head (`bool`): a presence decision learned on every question, absent ones included: a logit from
            the language model's state at `</p>` and the fused change embedding as that state modulates it. Its
            decision (one of two learned vectors) is added to every token after `</p>`, so the answer follows it:
            the reference's decision in training, the head's in evaluation and generation, where an answer decided
            absent cannot emit `[SEG]` and one decided present cannot end before it.
        presence_loss_weight (`float`): weight of the presence head's binary cross-entropy in the loss.
        presence_threshold (`float`): the presence logit above which a question is decided present, in evaluation
            and generation (training reads the reference's decision). 0: the head's own (probability 0.5).
            `train.py --calibrate_presence` sets it to the threshold of best balanced accuracy (the mean of the
            present questions' and the absent questions' accuracy) on the validation split's questions: the head
            learns from training pairs, where absent questions are a minority and are told apart more surely than
            on new pairs.
        question_mask (`bool`, needs `presence_head`): every question, absent ones included, also gets a mask
            decoded from its state at `</p>` through the shared mask path, trained against the union of its
            targets' truths (empty when the asked change is absent); the presence decision adds the evidence of
            that mask (a learned scale and offset of its strongest logits' mean) to the head's logit.
        croi_units (`list[str]`): the changes a question can ask about, one unit per class and direction
            (`"building:increase"`); when given, a linear head on the language model's state at `</p>` is trained
            to name the units each question asks about (present or absent; multi-label), so that the state the
            presence decision and the question mask read encodes what was asked. Empty: no head (the paper).
        croi_loss_weight (`float`): weight of that head's binary cross-entropy.
        presence_reads_croi (`bool`, needs `presence_head` and `croi_units`): the presence decision and the question
            mask read the CRoI head's probabilities (mapped by a linear layer to the state's width, gradients
            stopped) instead of the state at `</p>`: they see which change was asked, not the question's wording, so
            they cannot learn a training question's answer by heart.
        fusion_film (`bool`, needs `use_feature_fusion`): each `[SEG]` state (and each question mask's prompt) also
            scales and shifts, per channel, both dates' features inside the fusion module (SAM's and every FPN
            level's) before the dates are fused, so the fusion runs once per question for the mask decoder; the
            change tokens and the presence head keep the question-independent fusion. Starts as the identity.
        croi_plan (`bool`, needs `presence_head` and `croi_units`): the units the CRoI head names (the reference's
            in training, the head's own, thresholded, in evaluation and generation), mapped by a zero-initialised
            linear layer to the state's width, are added to every token after `</p>` with the presence decision,
            so that a long answer (an explanation) keeps naming the change the question was read as.
        question_token_dropout (`float`, 0 to < 1): in training, each token of the question (between `<p>` and
            `</p>`) is replaced with this probability by a token drawn uniformly from the ordinary vocabulary (ids
            above `eos_token_id` and below the new tokens'), as the language model reads it; a question is never
            replaced whole. A language model trained from scratch otherwise learns each training phrasing as a
            whole, and an unseen phrasing (with words it has seen, and words it has not) reads as noise.
        order_loss_weight (`float`, 0 = off): in training, the first `[SEG]` state of each question about an
            increase or a decrease (one the converter named, whose opposite direction's mask file it can find) also
            decodes a mask over its pair with T1 and T2 swapped, trained (BCE and Dice, weighed as the `[SEG]`
            masks) toward the opposite direction's truth, empty where that direction did not change. Training
            otherwise asks "new buildings" only where buildings appeared, so the mask path can learn "buildings
            changed" and never tell which date came first.
        order_presence_loss_weight (`float`, 0 = off; needs `presence_head`): in training, the same questions'
            presence decision (and, with `question_mask`, their question mask) also read their pair fused with T1
            and T2 swapped, trained toward the opposite direction's truth: absent (and an empty mask) where that
            direction did not change. Asked "new buildings" of a pair whose buildings were torn down, the decision,
            which chooses between pointing at a mask and "no change of interest", must read which date came first.
        order_head (`bool`, needs `presence_head`): a decision of its own on whether the asked change holds in the
            order the dates are given rather than the other. It reads the question's state at `</p>` and the pair
            fused in both orders: a score of each order as the presence decision scores a pair (FiLM, pooling, a
            small classifier), the other order's score subtracted, plus a bias read from the question alone (a
            question that names no direction holds in both orders). In training it learns from every present
            question about an increase or a decrease in both orders (the given order holds, the swapped order only
            where the opposite direction changed too) and from every present question that names no direction
            (both orders hold); the presence decision itself learns only the order given. In evaluation and
            generation a question counts as present only where both decisions say so, so the presence decision is
            not taught to doubt present changes to learn the order.
        order_head_loss_weight (`float`): the weight of the order head's binary cross-entropy.
        order_head_pooling (`str`): where the order head pools the pair fused in each order: `"image"` over the
            whole image (average and max), `"question_mask"` (needs `question_mask`) weighted by the question's own
            mask (its probabilities, without gradients), so that each order is scored by the cells where the asked
            class changed and not by what else the pair shows: a reading of a date that can hold on unseen pairs,
            where the whole image lets the head learn which training pair shows which direction.
        order_head_reads (`str`): what the order head compares: `"fused"` the pair fused as given and fused with
            the dates swapped, `"dates"` (needs the fusion module) the later date's own features (SAM's and the
            ResNet-FPN's, before the fusion module, through a 1 x 1 convolution) against the earlier date's: a score
            of "this date shows the asked change's outcome", which swapping the dates exchanges as well;
            `"land_cover"` (needs `land_cover_reads="dates"`) the land-cover head's log-probabilities of each class
            at the later date against those at the earlier: what each date shows, named in the classes the
            questions ask about and taught on every changed pixel.
        image_token_dropout (`float`, 0 to < 1): in training, each of a pair's image tokens (the projected CLIP
            features, with `change_tokens` also the change embedding they carry) reaches the language model as a
            zero vector with this probability, drawn per pair and token. The image encoders train on a few hundred
            pairs; an answer that reads every detail of a training pair's tokens reads an unseen pair's worse.
        scheduled_sampling (`float`, 0 to 1): in training, a pass without gradients first predicts every answer
            token from the reference's before it; each ordinary answer token it predicts wrongly is then replaced
            by that prediction, with this probability, as the language model reads it (labels, `[SEG]` and `</s>`
            stay the reference's). Teacher forcing alone shows the `[SEG]` state only the reference's words, while
            generation writes its own, and an explanation's own (the land cover the other date shows, say) are
            often not the reference's; the mask then follows the words. This costs a forward pass of the language
            model per step.
        question_mask_loss_weight (`float`): weight of the question mask's BCE and Dice, relative to the `[SEG]`
            masks' (`bce_loss_weight`, `dice_loss_weight`).
        land_cover_classes (`list[str]`): the land-cover classes of per-date labels in SECOND's convention (each
            changed pixel labelled with its class at T1 and at T2, unchanged pixels unlabelled); when given, a head
            on the fused change embedding is trained to name, at every cell, the class at T1 and the class at T2 of
            a changed pixel, or "unchanged". Every question-conditioned path reads that embedding, and telling a
            removed playground from a removed building is what a question about one and not the other needs.
            Empty: no head (the paper). Trained only on pairs whose samples have such labels.
        land_cover_loss_weight (`float`): weight of that head's cross-entropy.
        land_cover_reads (`str`): what the land-cover head reads: `"fused"` the fused change embedding (both dates'
            classes and "unchanged" from it), `"dates"` (needs the fusion module) each date's own features before
            the fusion module (those `order_head_reads="dates"` compares), naming that date's class of every changed
            pixel from that date alone: the per-date features then learn what each date shows, which is what tells
            an increase from a decrease.
        presence_reads_land_cover (`bool`, needs `presence_head`, `croi_units` and `land_cover_classes` read from the
            fused embedding): the presence decision also adds the evidence of a map composed, not learned, from what
            the land-cover head names at each cell and the units the CRoI head reads in the question: for an
            increase of a class, the chance that a cell is that class at T2 and was not at T1 (a decrease: the
            reverse), the largest over the asked units. A learned scale and offset of the log-odds of its strongest
            cells' mean join the head's logit (gradients stopped at the map). Per-cell land cover reads new pairs
            about as well as training pairs, where a decision learned from each training pair's answer does not;
            swapping the dates turns an increase's map into a decrease's.
    """

    model_type = "reasoncd"
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig, "sam_config": ReasonCDSamConfig,
                   "feature_fusion_config": ReasonCDFusionConfig}

    def __init__(
        self,
        text_config=None,
        vision_config=None,
        sam_config=None,
        feature_fusion_config=None,
        use_feature_fusion=True,
        vision_feature_layer=-2,
        image_seq_length=None,
        t1_token_id=32000,
        t2_token_id=32001,
        p_start_token_id=32002,
        p_end_token_id=32003,
        seg_token_id=32004,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        seg_hidden_state="predicting",
        ce_loss_weight=1.0,
        bce_loss_weight=2.0,
        dice_loss_weight=0.5,
        seg_token_loss_weight=10.0,
        bce_pos_weight=3.0,
        seg_state_norm=False,
        mask_conditioning="sparse",
        answer_decision_loss_weight=1.0,
        other_change_bce_weight=1.0,
        change_tokens=False,
        presence_head=False,
        presence_loss_weight=1.0,
        presence_threshold=0.0,
        question_mask=False,
        question_mask_loss_weight=1.0,
        land_cover_classes=(),
        land_cover_loss_weight=1.0,
        land_cover_reads="fused",
        croi_units=(),
        croi_loss_weight=1.0,
        presence_reads_croi=False,
        fusion_film=False,
        croi_plan=False,
        presence_reads_land_cover=False,
        question_token_dropout=0.0,
        image_token_dropout=0.0,
        scheduled_sampling=0.0,
        order_loss_weight=0.0,
        order_presence_loss_weight=0.0,
        order_head=False,
        order_head_loss_weight=1.0,
        order_head_pooling="image",
        order_head_reads="fused",
        initializer_range=0.02,
        tie_word_embeddings=False,
        **kwargs,
    ):
        if isinstance(text_config, dict):
            text_config = AutoConfig.for_model(**{"model_type": "llama", **text_config})
        elif text_config is None:
            text_config = LlamaConfig(vocab_size=32000 + len(NEW_TOKENS), pad_token_id=0)
        if isinstance(vision_config, dict):
            vision_config = AutoConfig.for_model(**{"model_type": "clip_vision_model", **vision_config})
        elif vision_config is None:
            vision_config = CLIPVisionConfig(
                hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                image_size=224, patch_size=14, projection_dim=768,
            )
        self.text_config = text_config
        self.vision_config = vision_config
        legacy_fusion = kwargs.pop("fusion_module", None)
        if legacy_fusion is not None:  # checkpoints saved before the typed sub-configs: one dict with "enabled"
            legacy_fusion = dict(legacy_fusion)
            use_feature_fusion = legacy_fusion.pop("enabled", use_feature_fusion)
            feature_fusion_config = feature_fusion_config or legacy_fusion
        self.sam_config = _typed(sam_config, ReasonCDSamConfig)
        self.feature_fusion_config = _typed(feature_fusion_config, ReasonCDFusionConfig)
        self.use_feature_fusion = bool(use_feature_fusion)

        patches = vision_config.image_size // vision_config.patch_size
        if image_seq_length is None:
            image_seq_length = patches * patches
        if image_seq_length != patches * patches:
            raise ValueError(
                f"image_seq_length={image_seq_length} does not match the vision tower "
                f"({vision_config.image_size}/{vision_config.patch_size})^2 = {patches * patches}"
            )
        if seg_hidden_state != "predicting":
            raise ValueError(f"seg_hidden_state={seg_hidden_state!r}: only 'predicting' is supported")
        self.vision_feature_layer = vision_feature_layer
        self.image_seq_length = image_seq_length
        self.t1_token_id = t1_token_id
        self.t2_token_id = t2_token_id
        self.p_start_token_id = p_start_token_id
        self.p_end_token_id = p_end_token_id
        self.seg_token_id = seg_token_id
        self.seg_hidden_state = seg_hidden_state
        self.ce_loss_weight = ce_loss_weight
        self.bce_loss_weight = bce_loss_weight
        self.dice_loss_weight = dice_loss_weight
        self.seg_token_loss_weight = seg_token_loss_weight
        self.bce_pos_weight = bce_pos_weight
        if mask_conditioning not in MASK_CONDITIONINGS:
            raise ValueError(f"mask_conditioning={mask_conditioning!r}: choose one of {MASK_CONDITIONINGS}")
        self.seg_state_norm = bool(seg_state_norm)
        self.mask_conditioning = mask_conditioning
        self.answer_decision_loss_weight = answer_decision_loss_weight
        self.other_change_bce_weight = other_change_bce_weight
        self.change_tokens = bool(change_tokens)
        self.presence_head = bool(presence_head)
        self.presence_loss_weight = presence_loss_weight
        if not (isinstance(presence_threshold, (int, float)) and math.isfinite(presence_threshold)):
            raise ValueError(f"presence_threshold={presence_threshold!r}: a finite number (a logit; 0 is the head's own)")
        self.presence_threshold = float(presence_threshold)
        if question_mask and not presence_head:
            raise ValueError("question_mask=True needs presence_head=True: the question mask is evidence for the "
                             "presence decision")
        self.question_mask = bool(question_mask)
        self.question_mask_loss_weight = question_mask_loss_weight
        self.land_cover_classes = list(land_cover_classes)
        self.land_cover_loss_weight = land_cover_loss_weight
        if land_cover_reads not in LAND_COVER_READINGS:
            raise ValueError(f"land_cover_reads={land_cover_reads!r}: choose one of {LAND_COVER_READINGS}")
        if land_cover_reads == "dates" and not (land_cover_classes and use_feature_fusion):
            raise ValueError("land_cover_reads='dates' needs land_cover_classes and use_feature_fusion=True: it reads "
                             "the fusion module's per-date features")
        self.land_cover_reads = land_cover_reads
        self.croi_units = list(croi_units)
        self.croi_loss_weight = croi_loss_weight
        if presence_reads_croi and not (presence_head and croi_units):
            raise ValueError("presence_reads_croi=True needs presence_head=True and croi_units: the decision reads the "
                             "CRoI head's probabilities")
        self.presence_reads_croi = bool(presence_reads_croi)
        if fusion_film and not use_feature_fusion:
            raise ValueError("fusion_film=True needs use_feature_fusion=True: it conditions the fusion module's levels")
        self.fusion_film = bool(fusion_film)
        if croi_plan and not (presence_head and croi_units):
            raise ValueError("croi_plan=True needs presence_head=True and croi_units: the CRoI head's units join the "
                             "presence decision after </p>")
        self.croi_plan = bool(croi_plan)
        if presence_reads_land_cover:
            if not (presence_head and croi_units and land_cover_classes and land_cover_reads == "fused"):
                raise ValueError("presence_reads_land_cover=True needs presence_head=True, croi_units and "
                                 "land_cover_classes read from the fused embedding (land_cover_reads='fused'): it "
                                 "composes the asked units' map from both dates' land cover")
            unknown = sorted({unit.split(":")[0] for unit in croi_units} - set(land_cover_classes))
            if unknown:
                raise ValueError(f"presence_reads_land_cover=True: the CRoI units' classes {unknown} are not among "
                                 f"land_cover_classes {list(land_cover_classes)}")
        self.presence_reads_land_cover = bool(presence_reads_land_cover)
        if not 0.0 <= question_token_dropout < 1.0:
            raise ValueError(f"question_token_dropout={question_token_dropout!r}: a probability in [0, 1)")
        self.question_token_dropout = float(question_token_dropout)
        if not 0.0 <= image_token_dropout < 1.0:
            raise ValueError(f"image_token_dropout={image_token_dropout!r}: a probability in [0, 1)")
        self.image_token_dropout = float(image_token_dropout)
        if not 0.0 <= scheduled_sampling <= 1.0:
            raise ValueError(f"scheduled_sampling={scheduled_sampling!r}: a probability in [0, 1]")
        self.scheduled_sampling = float(scheduled_sampling)
        if not order_loss_weight >= 0.0:
            raise ValueError(f"order_loss_weight={order_loss_weight!r}: a weight of at least 0")
        self.order_loss_weight = float(order_loss_weight)
        if not order_presence_loss_weight >= 0.0:
            raise ValueError(f"order_presence_loss_weight={order_presence_loss_weight!r}: a weight of at least 0")
        if order_presence_loss_weight and not presence_head:
            raise ValueError("order_presence_loss_weight needs presence_head=True: it trains the presence decision")
        self.order_presence_loss_weight = float(order_presence_loss_weight)
        if order_head and not presence_head:
            raise ValueError("order_head=True needs presence_head=True: a question counts as present where both "
                             "decisions say so")
        self.order_head = bool(order_head)
        if not order_head_loss_weight >= 0.0:
            raise ValueError(f"order_head_loss_weight={order_head_loss_weight!r}: a weight of at least 0")
        self.order_head_loss_weight = float(order_head_loss_weight)
        if order_head_pooling not in ORDER_HEAD_POOLINGS:
            raise ValueError(f"order_head_pooling={order_head_pooling!r}: choose one of {ORDER_HEAD_POOLINGS}")
        if order_head_pooling == "question_mask" and not (order_head and question_mask):
            raise ValueError("order_head_pooling='question_mask' needs order_head=True and question_mask=True: it "
                             "pools the order head's reading inside the question's own mask")
        self.order_head_pooling = order_head_pooling
        if order_head_reads not in ORDER_HEAD_READINGS:
            raise ValueError(f"order_head_reads={order_head_reads!r}: choose one of {ORDER_HEAD_READINGS}")
        if order_head_reads == "dates" and not (order_head and use_feature_fusion):
            raise ValueError("order_head_reads='dates' needs order_head=True and use_feature_fusion=True: it reads "
                             "the fusion module's per-date features")
        if order_head_reads == "land_cover" and not (order_head and land_cover_reads == "dates"):
            raise ValueError("order_head_reads='land_cover' needs order_head=True and land_cover_reads='dates': it "
                             "reads the land-cover head's reading of each date")
        self.order_head_reads = order_head_reads
        self.initializer_range = initializer_range
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ReasonCDConfig":
        """`reasoncd-7b` (the paper: LLaMA-2-7b, CLIP ViT-L/14 at 224, SAM ViT-H, ResNet34) or `tiny`."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        kwargs = copy.deepcopy(PRESETS[name])
        for key, value in overrides.items():
            if isinstance(value, dict) and key in cls.sub_configs:  # a sub-config override changes only its keys
                kwargs[key] = {**kwargs.get(key, {}), **value}
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @property
    def learns_date_order(self) -> bool:
        """Whether training reads each question's truth with T1 and T2 swapped (`order_loss_weight`,
        `order_presence_loss_weight`, `order_head`)."""
        return self.order_loss_weight > 0 or self.order_presence_loss_weight > 0 or self.order_head

    @property
    def new_token_ids(self) -> list[int]:
        """The ids of `NEW_TOKENS`, in that order."""
        return [getattr(self, field) for field in NEW_TOKEN_ID_FIELDS]

    @new_token_ids.setter
    def new_token_ids(self, ids) -> None:
        ids = list(ids)
        if len(ids) != len(NEW_TOKEN_ID_FIELDS):
            raise ValueError(f"new_token_ids: {len(NEW_TOKEN_ID_FIELDS)} ids ({', '.join(NEW_TOKENS)}), got {ids}")
        for field, token_id in zip(NEW_TOKEN_ID_FIELDS, ids):
            setattr(self, field, token_id)


# The options beyond the paper that make a from-scratch model follow the question (see the class docstring).
QUESTION_FOLLOWING = {
    "seg_state_norm": True,
    "mask_conditioning": "film",
    "change_tokens": True,
    "other_change_bce_weight": 3.0,
    "answer_decision_loss_weight": 5.0,
    "presence_head": True,
    "question_mask": True,
    # Half the test split's questions are phrased as no training question is: with their tokens dropped now and
    # then, the language model reads each word as a cue of its own (README, "Experiments 9").
    "question_token_dropout": 0.15,
}


def _llama(vocab_size: int, hidden_size: int, intermediate_size: int, layers: int, heads: int, context: int) -> dict:
    """A LLaMA text config; `<unk>`, `<s>`, `</s>` keep LLaMA's ids 0, 1, 2 (`<unk>` pads)."""
    return {
        "model_type": "llama", "vocab_size": vocab_size, "hidden_size": hidden_size,
        "intermediate_size": intermediate_size, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": heads, "max_position_embeddings": context, "rms_norm_eps": 1e-5,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
    }


def _clip(hidden_size: int, intermediate_size: int, layers: int, heads: int, image_size: int,
          patch_size: int = 14) -> dict:
    return {
        "model_type": "clip_vision_model", "hidden_size": hidden_size, "intermediate_size": intermediate_size,
        "num_hidden_layers": layers, "num_attention_heads": heads, "image_size": image_size, "patch_size": patch_size,
        "projection_dim": min(hidden_size, 768),
    }


PRESETS = {
    # The paper: LLaMA-2-7b-chat (+5 tokens), CLIP ViT-L/14 at 224 px, SAM ViT-H, ResNet34.
    "reasoncd-7b": {
        "text_config": _llama(32000 + len(NEW_TOKENS), 4096, 11008, 32, 32, 4096),
        "vision_config": _clip(1024, 4096, 24, 16, 224),
    },
    # Same architecture at a size that trains on two CPU cores. Trained from random weights, its mask path collapses
    # to "every change, whatever the question" and its random CLIP shows the language model too little to tell a
    # present change from an absent one; the options beyond the paper fix both (measured in the README's ablation).
    # CLIP cuts its 112-px frame into 56-px patches: 4 tokens per image. With 64 (14-px patches) the images were
    # three fifths of every sequence and the quickstart trained half again as long (1,101 s against 747 s) for the
    # same fidelity over two seeds, as with 16 (README, "Experiments 6"): the language model reads the change
    # through the change tokens.
    "tiny": {
        "text_config": _llama(2048, 256, 688, 4, 4, 512),
        "vision_config": _clip(64, 128, 2, 2, 112, patch_size=56),
        "sam_config": SAM_TINY,
        "feature_fusion_config": FUSION_TINY,
        **QUESTION_FOLLOWING,
    },
    # Between the two, for benchmarks and GPU smoke runs: a 1024-wide 8-layer LLM, CLIP at 224 px (256 tokens per
    # image), SAM 256-wide at 512 px and the paper's ResNet34.
    "medium": {
        "text_config": _llama(2048, 1024, 2816, 8, 16, 1024),
        "vision_config": _clip(256, 1024, 4, 4, 224),
        "sam_config": {
            "image_size": 512,
            "encoder_embed_dim": 256,
            "encoder_depth": 4,
            "encoder_num_heads": 4,
            "encoder_global_attn_indexes": [1, 3],
            "encoder_window_size": 14,
        },
        "feature_fusion_config": {"resnet_image_size": 256},
    },
}
