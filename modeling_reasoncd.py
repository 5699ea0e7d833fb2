"""ReasonCD: reasoning change detection with CLIP, a causal language model and SAM.

Data flow (top to bottom in this file):
  1. CLIP encodes T1 and T2 (frozen, one batched call); a linear projector maps the penultimate-layer patch
     features into the language model's embedding space, where they replace the `<T1>` / `<T2>` placeholders.
  2. The language model (LoRA-tuned in training) reads the prompt and answers; the last-layer hidden state of the
     position whose next token is `[SEG]` is the reasoned change-of-interest embedding (one per `[SEG]`: an answer
     about several changes names each and follows it with its own `[SEG]`).
  3. SAM's image encoder (frozen) and a ResNet+FPN branch feed the Multi-scale Feature Fusion module, which fuses
     both dates into the mask decoder's image embedding.
  4. `text_hidden_fc` turns the `[SEG]` state into a sparse prompt for SAM's mask decoder, which outputs
     low-resolution change logits.
"""

import importlib.util
import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
import torchvision
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
from segment_anything.modeling.image_encoder import Attention as SamAttention
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, DynamicCache, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

try:
    from .configuration_reasoncd import ReasonCDConfig, ReasonCDFusionConfig
    from .geometry_reasoncd import upscale_mask_logits
    from .generation_reasoncd import (ReasonCDGenerateOutput, ReasonCDGenerationMixin, _per_row, pair_rows,
                                      per_prompt, question_end_positions, seg_token_positions)
except ImportError:
    from configuration_reasoncd import ReasonCDConfig, ReasonCDFusionConfig
    from geometry_reasoncd import upscale_mask_logits
    from generation_reasoncd import (ReasonCDGenerateOutput, ReasonCDGenerationMixin, _per_row, pair_rows,
                                     per_prompt, question_end_positions, seg_token_positions)


# Answer tokens that `answer_decision_loss_weight` weighs (see `answer_loss`).
ANSWER_DECISION_TOKENS = 2


@dataclass
class ReasonCDFrozenFeatures(ModelOutput):
    """
    Outputs of the frozen encoders for P image pairs; what the training feature cache stores.

    Args:
        vision_features_t1, vision_features_t2 (`torch.FloatTensor` of shape `(P, image_seq_length, vision_hidden)`):
            CLIP patch features of the configured layer, CLS dropped.
        sam_features_t1, sam_features_t2 (`torch.FloatTensor` of shape `(P, prompt_embed_dim, h, w)`):
            SAM image-encoder embeddings, `h = w = sam image_size / patch_size`.
    """

    vision_features_t1: torch.FloatTensor | None = None
    vision_features_t2: torch.FloatTensor | None = None
    sam_features_t1: torch.FloatTensor | None = None
    sam_features_t2: torch.FloatTensor | None = None


@dataclass
class ReasonCDOutput(ModelOutput):
    """
    Output of [`ReasonCDForChangeDetection.forward`] (teacher-forced).

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): weighted sum of the three terms below.
        ce_loss, bce_loss, dice_loss (`torch.FloatTensor` of shape `()`, *optional*): the unweighted loss terms;
            the mask terms are 0 when no sample of the batch has a `[SEG]` and a mask.
        logits (`torch.FloatTensor` of shape `(B, L, vocab_size)`): language-model logits.
        pred_masks (`torch.FloatTensor` of shape `(B, h_low, w_low)`): low-resolution change logits in SAM's padded
            frame (`h_low = 4 * h`) of each row's first `[SEG]`; zeros where `seg_present` is False.
        seg_present (`torch.BoolTensor` of shape `(B,)`): whether the sequence holds a `[SEG]` token.
        seg_hidden_states (`torch.FloatTensor` of shape `(B, hidden_size)`): the last-layer state that predicts
            the first `[SEG]`; zeros where `seg_present` is False.
        target_masks (`torch.FloatTensor` of shape `(B, K, h_low, w_low)`): the logits of every `[SEG]` of each row,
            in order (K: the most `[SEG]` tokens any row holds, at least 1); zeros where `target_present` is False.
        target_present (`torch.BoolTensor` of shape `(B, K)`): whether row b holds a (k+1)-th `[SEG]`.
        target_hidden_states (`torch.FloatTensor` of shape `(B, K, hidden_size)`): the state that predicts each.
        presence_logits (`torch.FloatTensor` of shape `(B,)`, *optional*): with `presence_head`, the head's logit
            that the asked change is there (decided present above `presence_threshold`).
        presence_loss (`torch.FloatTensor` of shape `()`, *optional*): with `presence_head` and labels, the head's
            binary cross-entropy (unweighted; `loss` adds it times `presence_loss_weight`).
        question_masks (`torch.FloatTensor` of shape `(B, h_low, w_low)`, *optional*): with `question_mask`, each
            question's own mask logits (decoded from its state at `</p>`), whose evidence `presence_logits` includes.
        question_mask_loss (`torch.FloatTensor` of shape `()`, *optional*): with `question_mask` and masks, the
            question masks' BCE and Dice weighted as the `[SEG]` masks' (`loss` adds it times
            `question_mask_loss_weight`).
        croi_logits (`torch.FloatTensor` of shape `(B, len(croi_units))`, *optional*): with `croi_units`, which
            changes each question asks about, read off its state at `</p>`.
        croi_loss (`torch.FloatTensor` of shape `()`, *optional*): with `croi_units` and `croi_targets`, that
            head's binary cross-entropy over the rows whose units are known (`loss` adds it times
            `croi_loss_weight`).
        order_logits (`torch.FloatTensor` of shape `(B,)`, *optional*): with `order_head`, that head's logit that
            the asked change holds in the order the dates are given; a question counts as present in evaluation
            where it is positive and `presence_logits` is above `presence_threshold`.
        order_loss (`torch.FloatTensor` of shape `()`, *optional*): with `order_loss_weight`,
            `order_presence_loss_weight` or `order_head` and rows that have a truth with the dates swapped, the
            weighted terms of those rows read in that order (in `loss`): their masks' BCE and Dice, their presence
            decisions' BCE and their question masks' BCE and Dice, the order head's BCE in both orders.
        land_cover_loss (`torch.FloatTensor` of shape `()`, *optional*): with `land_cover_classes` and
            `land_cover` labels, the land-cover head's cross-entropy over both dates' labelled pixels (`loss` adds
            it times `land_cover_loss_weight`).
    """

    loss: torch.FloatTensor | None = None
    ce_loss: torch.FloatTensor | None = None
    bce_loss: torch.FloatTensor | None = None
    dice_loss: torch.FloatTensor | None = None
    presence_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pred_masks: torch.FloatTensor | None = None
    seg_present: torch.BoolTensor | None = None
    seg_hidden_states: torch.FloatTensor | None = None
    presence_logits: torch.FloatTensor | None = None
    question_masks: torch.FloatTensor | None = None
    question_mask_loss: torch.FloatTensor | None = None
    croi_logits: torch.FloatTensor | None = None
    croi_loss: torch.FloatTensor | None = None
    order_logits: torch.FloatTensor | None = None
    order_loss: torch.FloatTensor | None = None
    land_cover_loss: torch.FloatTensor | None = None
    target_masks: torch.FloatTensor | None = None
    target_present: torch.BoolTensor | None = None
    target_hidden_states: torch.FloatTensor | None = None


def changed_in_each_rows_pair(masks: torch.Tensor, pair_index: torch.Tensor) -> torch.Tensor:
    """Every pixel that changed for any question or target about each row's pair, `(B, H, W)` bool, from the truths
    `masks` `(B, K, H, W)`. Computed once per batch: a question's hard negatives are these pixels outside its own
    truth (`_changed_for_other_targets`)."""
    changed = (masks > 0.5).any(dim=1).float()
    pairs = int(pair_index.max()) + 1
    per_pair = changed.new_zeros(pairs, *changed.shape[1:]).index_add_(0, pair_index.to(changed.device), changed)
    return (per_pair > 0)[pair_index.to(changed.device)]


def _changed_for_other_targets(changed_in_pair: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixels that changed for another question about a row's pair, or for another target of its own answer, but
    not for `target`: 1.0 there, else 0.0. `changed_in_pair` is the row's `changed_in_each_rows_pair`: it holds
    `target`'s own pixels too, which the product removes."""
    return changed_in_pair.to(target.dtype) * (1.0 - target)


def question_truths(masks: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """The truth of each question as a whole, `(B, 1, H, W)`: the union of its targets' masks (`masks` `(B, K, H, W)`
    or `(B, H, W)`), empty where its answer points at no mask (`present` `(B,)` False: the asked change is absent)."""
    union = (masks > 0.5).any(dim=1) if masks.dim() == 4 else masks > 0.5
    return (union & present.to(union.device)[:, None, None])[:, None].to(masks.dtype)


# --- training-only input noise (`question_token_dropout`) ---
def noised_question_tokens(input_ids: torch.Tensor, config: ReasonCDConfig) -> torch.Tensor:
    """
    `input_ids` with each token strictly between a row's last `<p>` and last `</p>` replaced, with probability
    `config.question_token_dropout`, by an ordinary token drawn uniformly (ids above `eos_token_id`, below the new
    tokens'); a row whose every question token was drawn keeps its question. Rows without the two tokens are left.
    """
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
    last = lambda token_id: torch.where(input_ids == token_id, columns, -1).amax(dim=1, keepdim=True)
    question = (columns > last(config.p_start_token_id)) & (columns < last(config.p_end_token_id))
    drawn = question & (torch.rand(input_ids.shape, device=input_ids.device) < config.question_token_dropout)
    drawn &= (drawn != question).any(dim=1, keepdim=True)
    ordinary = torch.randint(config.eos_token_id + 1, min(config.new_token_ids), input_ids.shape,
                             device=input_ids.device)
    return torch.where(drawn, ordinary, input_ids)


def self_fed_answer_tokens(read_ids: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor,
                           logits: torch.Tensor, config: ReasonCDConfig) -> torch.Tensor:
    """
    `read_ids` with each answer token (`labels` != -100) that the model predicts wrongly replaced, with probability
    `config.scheduled_sampling`, by its prediction (`logits` `(B, k, vocab)`: a pass over the same rows, its last k
    positions). Only ordinary tokens are replaced, and only by ordinary tokens (ids above `eos_token_id`, below the
    new tokens'): `[SEG]`, `</s>` and the other new tokens stay where the reference has them. The answer's opening
    (`ANSWER_DECISION_TOKENS`) stays too: it says what the presence decision after `</p>` decided, the reference's in
    training, and an opening that contradicts it is not an answer generation writes.
    """
    length, kept = input_ids.shape[1], logits.shape[1]
    predicted = torch.full_like(input_ids, -1)
    predicted[:, length - kept + 1:] = logits[:, :-1].argmax(dim=-1)  # the token at t is predicted at t - 1
    ordinary = lambda ids: (ids > config.eos_token_id) & (ids < min(config.new_token_ids))
    answer = labels != -100
    answer &= answer.long().cumsum(dim=1) > ANSWER_DECISION_TOKENS
    wrong = answer & ordinary(input_ids) & ordinary(predicted) & (predicted != input_ids)
    drawn = wrong & (torch.rand(input_ids.shape, device=input_ids.device) < config.scheduled_sampling)
    return torch.where(drawn, predicted, read_ids)


def reference_units(croi_targets: torch.Tensor | None, rows: int, units: int, device) -> torch.Tensor:
    """The asked units `(rows, units)` as bools, from `croi_targets` (a row of -1: not known, so none asked)."""
    if croi_targets is None:
        return torch.zeros(rows, units, dtype=torch.bool, device=device)
    return croi_targets > 0


# --- losses (weights and options from `ReasonCDConfig`) ---
def answer_logit_count(labels: torch.Tensor) -> int:
    """How many last positions of `(B, L)` labels hold every answer token's logits (the ones predicting them)."""
    answered = (labels != -100).any(dim=0)
    if not bool(answered.any()):
        return 1
    return labels.shape[1] - int(answered.nonzero()[0]) + 1


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, config: ReasonCDConfig) -> torch.Tensor:
    """
    Cross-entropy over answer tokens (`labels` != -100). Two extra weights, both off at 1.0:
    `seg_token_loss_weight` on the `[SEG]` class in rows whose greedy prediction misses the `[SEG]` the label has,
    and `answer_decision_loss_weight` on an answer's opening tokens, where it says "present" or "absent".
    """
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    valid = targets != -100
    per_token = F.cross_entropy(logits.transpose(1, 2), targets.masked_fill(~valid, 0), reduction="none")
    seg = config.seg_token_id
    is_seg_target = targets == seg
    predicted_seg = ((logits.argmax(-1) == seg) & valid).any(dim=1)
    missed = is_seg_target.any(dim=1) & ~predicted_seg
    weights = valid.float()
    weights = torch.where(is_seg_target & missed.unsqueeze(1), weights * config.seg_token_loss_weight, weights)
    if config.answer_decision_loss_weight != 1.0:
        # Explicit answers decide at their first token ("There is no change" / "It's the"), implicit ones by their
        # second ("The question points" / "The change map"). Two tokens among twenty would weigh little.
        opening = valid & (valid.long().cumsum(dim=1) <= ANSWER_DECISION_TOKENS)
        weights = torch.where(opening, weights * config.answer_decision_loss_weight, weights)
    return (per_token * weights).sum() / weights.sum().clamp(min=1.0)


def mask_losses(target_masks: torch.Tensor, target_present: torch.Tensor, masks: torch.Tensor | None,
                reshaped_sizes: torch.Tensor | None, pair_index: torch.Tensor,
                config: ReasonCDConfig, changed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Mean BCE and Dice over every `[SEG]` of every row (`target_masks` `(B, K, h, w)`, `target_present` `(B, K)`),
    each against its own truth (`masks` `(B, K', H, W)`, or `(B, H, W)` for one per row) upscaled to the truth's
    size. The change class weighs `bce_pos_weight`; pixels that changed only for another question about the same
    pair, or for another target of the same answer, weigh `other_change_bce_weight` (`changed`: those pixels per
    row, when not the union of `masks` over each row's pair). Both losses are a connected zero when no row has a mask.
    """
    zero = target_masks.sum() * 0.0
    if masks is None or not bool(target_present.any()):
        return zero, zero
    if reshaped_sizes is None:
        raise ValueError("masks were given without reshaped_sizes; pass the processor's output unchanged")
    if masks.dim() == 3:
        masks = masks[:, None]
    counts = target_present.sum(dim=1)
    short = (counts > masks.shape[1]).nonzero().squeeze(1).tolist()
    if short:
        raise ValueError(f"row {short[0]}'s answer holds {int(counts[short[0]])} [SEG] tokens but masks give "
                         f"{masks.shape[1]} per question: pass one mask per [SEG] (a list per question)")
    reshaped_sizes = _per_row(reshaped_sizes, pair_index)
    frame = config.sam_config.image_size
    pos_weight = torch.tensor(config.bce_pos_weight, device=target_masks.device)
    other_weight = config.other_change_bce_weight
    bce_terms, dice_terms = [], []
    if changed is None and other_weight != 1.0:
        changed = changed_in_each_rows_pair(masks, pair_index)
    for row, k in target_present.nonzero().tolist():
        logits = upscale_mask_logits(target_masks[row, k], reshaped_sizes[row], masks.shape[-2:], frame).float()
        target = (masks[row, k] > 0.5).float()
        weight = None
        if other_weight != 1.0:
            weight = 1.0 + (other_weight - 1.0) * _changed_for_other_targets(changed[row], target)
        bce_terms.append(F.binary_cross_entropy_with_logits(logits, target, weight=weight, pos_weight=pos_weight))
        prob = logits.sigmoid()
        dice_terms.append(1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1))
    return torch.stack(bce_terms).mean(), torch.stack(dice_terms).mean()


class Float32Buffers:
    """
    Mixin for modules whose float32 buffers must stay float32 however the model is cast: `.to(torch.bfloat16)`,
    `.half()`, and DeepSpeed's bf16/fp16 modes (which cast the whole module) move these buffers to the new device
    but keep their dtype. Parameters are cast as usual, so an optimizer sees one dtype.
    """

    def _apply(self, fn, recurse=True):
        kept = {name: buffer for name, buffer in self._buffers.items()
                if buffer is not None and buffer.dtype == torch.float32}
        super()._apply(fn, recurse)
        for name, original in kept.items():
            if self._buffers[name].dtype != torch.float32:
                self._buffers[name] = original.to(self._buffers[name].device)
        return self


class Float32PositionEmbedding(Float32Buffers, PositionEmbeddingRandom):
    """
    SAM's random Fourier positional encoding with its Gaussian matrix kept in float32: segment-anything multiplies a
    float32 coordinate grid by it (so a cast matrix fails on mixed dtypes), and in bf16 the matrix, scaled by 2*pi,
    would shift every phase by up to a few hundredths of a turn.
    """


class Float32BatchNorm2d(Float32Buffers, nn.BatchNorm2d):
    """
    BatchNorm2d that normalises in float32 and keeps its running statistics in float32 under any cast (a bf16
    running variance, updated with momentum 0.1, loses most of each update to rounding). Input and output keep the
    caller's dtype; the affine parameters are cast with the model and read in float32.
    """

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(features)
        momentum = self.momentum if self.momentum is not None else 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch_statistics = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        normalised = F.batch_norm(features.float(), self.running_mean if track else None,
                                  self.running_var if track else None, weight, bias, use_batch_statistics, momentum,
                                  self.eps)
        return normalised.to(features.dtype)


class ChannelAttention(nn.Module):
    """Average- and max-pooled channel descriptors through one shared MLP, summed, sigmoid, multiplied in."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=False),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        scores = self.mlp(F.adaptive_avg_pool2d(features, 1)) + self.mlp(F.adaptive_max_pool2d(features, 1))
        return features * torch.sigmoid(scores)


class ConvFeedForward(nn.Module):
    """Two 1x1 convolutions, each followed by BatchNorm and GELU (the paper's Figure 7(b))."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, kernel_size=1, bias=False),
            Float32BatchNorm2d(hidden_channels),
            nn.GELU(),
            nn.Conv2d(hidden_channels, out_channels, kernel_size=1, bias=False),
            Float32BatchNorm2d(out_channels),
            nn.GELU(),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def resnet_backbone(depth: int, base_width: int = 64) -> torchvision.models.ResNet:
    """
    torchvision's ResNet of this depth without its classification head, its stages `base_width` x (1, 2, 4, 8)
    channels wide. At 64 it is torchvision's own, whose official state dict loads; narrower, the stem and every
    stage are rebuilt at the new width (same blocks, same module names).
    """
    builders = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34}
    if depth not in builders:
        raise ValueError(f"feature_fusion_config.resnet_depth={depth}: supported depths are {sorted(builders)}")
    if base_width < 1:
        raise ValueError(f"feature_fusion_config.resnet_base_width={base_width}: must be a positive channel count")
    net = builders[depth](weights=None, norm_layer=Float32BatchNorm2d)
    net.fc = nn.Identity()  # classification head unused; keeps official keys for the rest
    if base_width != net.conv1.out_channels:
        net.inplanes = base_width
        net.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        net.bn1 = Float32BatchNorm2d(base_width)
        for index, name in enumerate(("layer1", "layer2", "layer3", "layer4")):
            blocks = len(getattr(net, name))
            setattr(net, name, net._make_layer(torchvision.models.resnet.BasicBlock, base_width * 2**index, blocks,
                                               stride=1 if index == 0 else 2))
    return net


class ResNetFPN(nn.Module):
    """A torchvision ResNet (its official state dict loads into `backbone`) with an FPN over its four stages."""

    def __init__(self, depth: int, out_channels: int, base_width: int = 64) -> None:
        super().__init__()
        self.backbone = resnet_backbone(depth, base_width)
        stage_channels = [stage[-1].conv2.out_channels for stage in self._stages()]
        self.fpn = torchvision.ops.FeaturePyramidNetwork(stage_channels, out_channels)

    def _stages(self):
        return [self.backbone.layer1, self.backbone.layer2, self.backbone.layer3, self.backbone.layer4]

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(pixel_values.to(b.conv1.weight.dtype)))))
        levels = {}
        for index, stage in enumerate(self._stages()):
            x = stage(x)
            levels[str(index)] = x
        return list(self.fpn(levels).values())


class MultiScaleFeatureFusion(nn.Module):
    """
    Fuses SAM's high-level features with ResNet-FPN's low-level ones, per date and then across dates.

    Per image: SAM features ++ FPN levels resized to SAM's grid -> channel attention. Then T1 ++ T2 -> channel
    attention -> FFN -> the mask decoder's embedding. Disabled (the paper's ablation): SAM T1 ++ SAM T2 -> FFN.
    """

    def __init__(self, *, sam_channels: int, out_channels: int, config: ReasonCDFusionConfig, enabled: bool) -> None:
        super().__init__()
        self.enabled = enabled
        self.resnet_image_size = config.resnet_image_size
        if self.enabled:
            self.resnet_fpn = ResNetFPN(config.resnet_depth, config.fpn_channels, config.resnet_base_width)
            per_image = sam_channels + config.fpn_levels * config.fpn_channels
            self.image_attention = ChannelAttention(per_image, config.attention_reduction)
            self.pair_attention = ChannelAttention(2 * per_image, config.attention_reduction)
            ffn_in = 2 * per_image
        else:
            ffn_in = 2 * sam_channels
        self.ffn = ConvFeedForward(ffn_in, config.ffn_hidden_dim, out_channels)

    def forward(
        self,
        sam_features_t1: torch.Tensor,
        sam_features_t2: torch.Tensor,
        pixel_values_t1: torch.Tensor | None = None,
        pixel_values_t2: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not self.enabled:
            return self.ffn(self._module_dtype(torch.cat([sam_features_t1, sam_features_t2], dim=1)))
        return self.fuse(*self.date_features(sam_features_t1, sam_features_t2, pixel_values_t1, pixel_values_t2))

    def date_features(self, sam_features_t1, sam_features_t2, pixel_values_t1, pixel_values_t2):
        """Per date, SAM's features with the FPN levels resized to SAM's grid, before any attention: `(P, C, h, w)`
        twice, C = SAM's channels + `fpn_levels` x `fpn_channels` (the fusion module must be enabled)."""
        sam_features_t1, sam_features_t2 = self._module_dtype(sam_features_t1), self._module_dtype(sam_features_t2)
        if pixel_values_t1 is None or pixel_values_t2 is None:
            raise ValueError("the fusion module needs sam_pixel_values_t1/t2 for its ResNet branch")
        pairs = sam_features_t1.shape[0]
        # Both dates go through the ResNet in one batched call.
        pixels = torch.cat([pixel_values_t1, pixel_values_t2], dim=0)
        size = (self.resnet_image_size, self.resnet_image_size)
        if pixels.shape[-2:] != size:
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
        grid = sam_features_t1.shape[-2:]
        levels = [F.interpolate(level, size=grid, mode="bilinear", align_corners=False)
                  for level in self.resnet_fpn(pixels)]
        per_date = torch.cat([torch.cat([sam_features_t1, sam_features_t2], dim=0), *levels], dim=1)
        return per_date[:pairs], per_date[pairs:]

    def _module_dtype(self, features: torch.Tensor) -> torch.Tensor:
        # Cached or frozen-encoder features may come in another dtype than this module's (e.g. float32 features
        # into a module DeepSpeed cast to bf16).
        return features.to(self.ffn.layers[0].weight.dtype)

    def fuse(self, date_features_t1: torch.Tensor, date_features_t2: torch.Tensor) -> torch.Tensor:
        """`date_features` of both dates (one row per pair, or per question) -> the mask decoder's embedding."""
        rows = date_features_t1.shape[0]
        per_image = self.image_attention(torch.cat([date_features_t1, date_features_t2], dim=0))
        return self.ffn(self.pair_attention(torch.cat([per_image[:rows], per_image[rows:]], dim=1)))


class SegStateStandardizer(Float32Buffers, nn.Module):
    """
    Per-dimension standardisation of `[SEG]` states with running statistics (an option beyond the paper).

    The states of different questions share one large component (the "say `[SEG]` next" direction), which swamps
    the part that names the change of interest; a from-scratch mask path then settles on the question-agnostic
    answer. Subtracting the running mean and dividing by the running standard deviation leaves what differs between
    questions. The statistics follow the training batches (the first batch sets them, later ones move them by
    `momentum`) and are used unchanged at inference, so a question's mask never depends on its batch.
    """

    def __init__(self, hidden_size: int, momentum: float = 0.05, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(hidden_size))
        self.register_buffer("running_var", torch.ones(hidden_size))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _track(self, states: torch.Tensor) -> None:
        mean, var = states.float().mean(dim=0), states.float().var(dim=0, unbiased=False)
        rate = 1.0 if int(self.num_batches_tracked) == 0 else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), rate)
        self.running_var.lerp_(var.to(self.running_var.dtype), rate)
        self.num_batches_tracked += 1

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if self.training and states.shape[0] > 1:
            self._track(states.detach())
        scale = torch.rsqrt(self.running_var.float() + self.eps)
        return ((states.float() - self.running_mean.float()) * scale).to(states.dtype)


class PromptFiLM(nn.Module):
    """
    Question-conditioned dense path (an option beyond the paper): the `[SEG]` state scales and shifts each channel
    of the fused image embedding, `x * (1 + gamma) + beta`, before the mask decoder reads it. The sparse prompt alone
    reaches the mask only through the decoder's attention; FiLM lets the question select feature channels (e.g.
    "water" vs "buildings") directly. The output layer starts at zero, so training starts from the paper's decoder.
    """

    def __init__(self, hidden_size: int, channels: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(hidden_size, channels)
        self.out = nn.Linear(channels, 2 * channels)
        self.out.zero_init = True  # read by `_init_weights`

    def forward(self, image_embeddings: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.out(F.relu(self.hidden(states.to(self.hidden.weight.dtype)))).chunk(2, dim=-1)
        gamma, beta = gamma[..., None, None].to(image_embeddings.dtype), beta[..., None, None].to(image_embeddings.dtype)
        return image_embeddings * (1 + gamma) + beta


class QuestionedChangeScore(nn.Module):
    """A logit per question from the language model's last-layer state at `</p>` and a fused change embedding as
    that state modulates it (FiLM, then average and max pooling, then a small classifier), so the score looks at
    the change the question names."""

    def __init__(self, hidden_size: int, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        # The fused embedding's scale drifts while the fusion module trains: the head sees it normalised per pair.
        self.change_norm = nn.GroupNorm(1, channels)
        self.film = nn.Linear(hidden_size, 2 * channels)
        self.classifier = nn.Sequential(nn.Linear(hidden_size + 2 * channels, channels), nn.ReLU(),
                                        nn.Linear(channels, 1))

    def forward(self, states: torch.Tensor, change_embeddings: torch.Tensor) -> torch.Tensor:
        """`states` `(N, hidden)` at `</p>`, `change_embeddings` `(N, C, h, w)`: logits `(N,)`."""
        return self.score(self.norm(states.to(self.norm.weight.dtype)), change_embeddings)

    def score(self, question: torch.Tensor, change_embeddings: torch.Tensor,
              within: torch.Tensor | None = None) -> torch.Tensor:
        """`forward` from the normalised states; `within` `(N, h, w)` (0 to 1), where given, weighs the cells both
        poolings read (a weighted average, and the largest weighted feature)."""
        gamma, beta = self.film(question).chunk(2, dim=-1)
        change = self.change_norm(change_embeddings.to(gamma.dtype))
        features = F.relu(change * (1 + gamma[..., None, None]) + beta[..., None, None])
        if within is None:
            pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=-1)
        else:
            weights = within.to(features.dtype)[:, None]
            weighted = features * weights
            average = weighted.sum(dim=(2, 3)) / weights.sum(dim=(2, 3)).clamp_min(1e-6)
            pooled = torch.cat([average, weighted.amax(dim=(2, 3))], dim=-1)
        return self.classifier(torch.cat([question, pooled], dim=-1)).squeeze(-1)


class PresenceHead(QuestionedChangeScore):
    """
    Whether the asked change is there (an option beyond the paper), decided apart from the wording of the answer.

    A `QuestionedChangeScore` of the pair as given (the state at `</p>` is the question read, after both images),
    trained on every question, absent ones included. The decision enters the language model as one of two learned
    vectors added to every token after `</p>` (the reference's decision in training, the head's in generation), so
    the answer opens as the head decided.
    """

    def __init__(self, hidden_size: int, channels: int) -> None:
        super().__init__(hidden_size, channels)
        self.decision_embeddings = nn.Embedding(2, hidden_size)  # row 0: absent, row 1: present

    def decision(self, present: torch.Tensor) -> torch.Tensor:
        """The vectors `(N, hidden)` that tell the language model the decision (`present`: bool `(N,)`)."""
        return self.decision_embeddings(present.long())


class OrderHead(QuestionedChangeScore):
    """
    Whether the asked change holds in the order the dates are given rather than the other (an option beyond the
    paper, `ReasonCDConfig.order_head`): the score of the pair fused as given minus its score fused with T1 and T2
    swapped (with `order_head_reads="dates"`, the later date's own features against the earlier's; with
    `"land_cover"`, the land-cover head's reading of the later date against the earlier's), plus a bias
    read from the question alone. Swapping the dates flips the sign of the difference, so a question about an
    increase learns one side of it; a question that names no direction, the bias.
    """

    def __init__(self, hidden_size: int, channels: int, date_channels: int | None = None) -> None:
        super().__init__(hidden_size, channels)
        self.bias = nn.Linear(hidden_size, 1)
        self.bias.zero_init = True  # starts undecided between the orders
        # With `order_head_reads="dates"` or `"land_cover"`: what each date shows, brought to the scoring layers'
        # width.
        self.date_projection = None if date_channels is None else nn.Conv2d(date_channels, channels, kernel_size=1)

    def forward(self, states: torch.Tensor, given: torch.Tensor, swapped: torch.Tensor,
                question_masks: torch.Tensor | None = None) -> torch.Tensor:
        """`states` `(N, hidden)` at `</p>`; each question's pair read as given and swapped (`order_readings`:
        fused in both orders, `(N, C, h, w)` each, or the later and the earlier date's own features); with
        `question_masks` (each question's own mask logits, `(N, h', w')`), both are read inside that mask
        (`ReasonCDConfig.order_head_pooling`): logits `(N,)`."""
        question = self.norm(states.to(self.norm.weight.dtype))
        if self.date_projection is not None:
            given = self.date_projection(given.to(self.date_projection.weight.dtype))
            swapped = self.date_projection(swapped.to(self.date_projection.weight.dtype))
        within = None
        if question_masks is not None:
            # The cells where the asked class changed; the mask learns from its own loss, not from the order.
            within = F.adaptive_avg_pool2d(question_masks.detach().float().sigmoid()[:, None], given.shape[-2:])[:, 0]
        difference = self.score(question, given, within) - self.score(question, swapped, within)
        return difference + self.bias(question).squeeze(-1)


class LandCoverHead(nn.Module):
    """
    What each changed cell was and became (an option beyond the paper): from the fused change embedding, per cell,
    logits over the land-cover classes plus "unchanged", once for T1 and once for T2. SECOND-style labels name both
    classes of every changed pixel; taught them, the embedding every question-conditioned path reads keeps apart
    changes that look alike as changes (a building and a playground both turned to bare ground).
    """

    def __init__(self, channels: int, classes: int, date_channels: int | None = None) -> None:
        super().__init__()
        # With `land_cover_reads="dates"`: each date's own features, brought to the head's width; each date then
        # names only its own class, without "unchanged" (which one date cannot show).
        self.date_projection = None if date_channels is None else nn.Conv2d(date_channels, channels, kernel_size=1)
        self.classes = classes if date_channels else classes + 1  # the fused embedding's last: unchanged
        self.hidden = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.out = nn.Conv2d(channels, self.classes if date_channels else 2 * self.classes, kernel_size=1)

    def forward(self, change_embeddings: torch.Tensor, later: torch.Tensor | None = None) -> torch.Tensor:
        """`change_embeddings` `(P, C, h, w)`: logits `(P, 2, classes + 1, h, w)` (T1's, then T2's); with a date
        projection, the earlier date's own features and `later` the later's: logits `(P, 2, classes, h, w)`."""
        if self.date_projection is None:
            logits = self.out(F.gelu(self.hidden(change_embeddings.to(self.hidden.weight.dtype))))
            return logits.unflatten(1, (2, self.classes))
        dates = torch.cat([change_embeddings, later], dim=0)
        logits = self.out(F.gelu(self.hidden(self.date_projection(dates.to(self.date_projection.weight.dtype)))))
        return torch.stack(logits.chunk(2, dim=0), dim=1)


class LandCoverEvidence(nn.Module):
    """
    Presence evidence composed from the land-cover head (`ReasonCDConfig.presence_reads_land_cover`): at every cell,
    the chance that an asked unit's transition happened there (an increase of class c: c at T2 and not at T1; a
    decrease: the reverse), weighed by how surely the CRoI head reads that unit in the question, the largest over
    the units; the log-odds of its `top_k` strongest cells' mean, scaled and shifted by two learned numbers (from 1
    and 0, as the question mask's: these move by about the learning rate per step, so a scale started at zero would
    stay near it).
    """

    top_k = 4  # cells of the fused grid (8 pixels wide in a 256-pixel frame): about a 16 x 16-pixel object

    def __init__(self, croi_units: list[str], land_cover_classes: list[str]) -> None:
        super().__init__()
        pairs = [unit.split(":") for unit in croi_units]
        # Plain lists, not buffers: `from_pretrained` builds the model without running `__init__`'s fills, and a
        # buffer kept out of the checkpoint would come back uninitialised.
        self.unit_class = [land_cover_classes.index(cover) for cover, _ in pairs]
        self.unit_increases = [direction == "increase" for _, direction in pairs]
        # One-element vectors, not scalars: DeepSpeed's flattening cannot view 0-dim tensors.
        self.evidence_scale = nn.Parameter(torch.ones(1))
        self.evidence_offset = nn.Parameter(torch.zeros(1))

    def transition_maps(self, land_cover_logits: torch.Tensor) -> torch.Tensor:
        """`land_cover_logits` `(N, 2, K + 1, h, w)` (`LandCoverHead` on the fused embedding): each unit's
        transition probability `(N, U, h, w)`."""
        device = land_cover_logits.device
        probabilities = land_cover_logits.float().softmax(dim=2)[:, :, torch.tensor(self.unit_class, device=device)]
        earlier, later = probabilities.unbind(dim=1)  # (N, U, h, w) each
        increases = torch.tensor(self.unit_increases, device=device)[:, None, None]
        return torch.where(increases, later * (1 - earlier), earlier * (1 - later))

    def forward(self, land_cover_logits: torch.Tensor, asked: torch.Tensor) -> torch.Tensor:
        """`asked` `(N, U)`: the CRoI head's probabilities: evidence `(N,)` to add to the presence logit."""
        maps = self.transition_maps(land_cover_logits.detach())
        composed = (maps * asked.detach().float()[:, :, None, None]).amax(dim=1).flatten(1)
        strongest = composed.topk(min(self.top_k, composed.shape[1]), dim=1).values.mean(dim=1)
        return self.evidence_scale * torch.logit(strongest, eps=1e-4) + self.evidence_offset


def land_cover_loss(logits: torch.Tensor, labels: torch.Tensor, reshaped_sizes: torch.Tensor,
                    frame: int, changed_only: bool = False) -> torch.Tensor:
    """Cross-entropy of `LandCoverHead` logits `(P, 2, K + 1, h, w)` against per-date labels `(P, 2, H, W)` (class
    indices, K = unchanged, -100 = unknown), the logits upscaled to each pair's labels as masks are (`reshaped_sizes`
    `(P, 2)`); with `changed_only` (each date read alone: logits `(P, 2, K, h, w)`) the unchanged pixels are not
    taught; a connected zero when no pixel is labelled."""
    if changed_only:
        labels = labels.masked_fill(labels == logits.shape[2], -100)
    terms = []
    for pair in range(labels.shape[0]):
        if not bool((labels[pair] >= 0).any()):
            continue
        upscaled = upscale_mask_logits(logits[pair], reshaped_sizes[pair], labels.shape[-2:], frame).float()
        terms.append(F.cross_entropy(upscaled, labels[pair].long(), ignore_index=-100))
    return torch.stack(terms).mean() if terms else logits.sum() * 0.0


class QuestionMask(nn.Module):
    """
    A mask for every question, absent ones included, and the presence evidence read off it (an option beyond the
    paper). The language model's state at `</p>` is standardised with its own running statistics and mapped by a
    linear layer to a prompt for the shared mask path (the same projection, FiLM and decoder as the `[SEG]`
    states). Trained against the union of the question's truths, it learns to return an empty map when the asked
    change is absent: the evidence is a learned scale and offset of the mean of its `top_k` strongest logits,
    positive when some dozen cells are confidently changed.
    """

    top_k = 16  # low-resolution cells: about a 16 x 16-pixel object in a 256-pixel frame

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.state_norm = SegStateStandardizer(hidden_size)
        self.prompt = nn.Linear(hidden_size, hidden_size)
        # One-element vectors, not scalars: DeepSpeed's flattening cannot view 0-dim tensors.
        self.evidence_scale = nn.Parameter(torch.ones(1))
        self.evidence_offset = nn.Parameter(torch.zeros(1))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """`states` `(N, hidden)` at `</p>`: prompts `(N, hidden)` in the space the mask path reads."""
        standardized = self.state_norm(states)
        return self.prompt(standardized.to(self.prompt.weight.dtype))

    def evidence(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """`mask_logits` `(N, h, w)`: presence evidence `(N,)` to add to the presence head's logit."""
        strongest = mask_logits.flatten(1).float().topk(min(self.top_k, mask_logits[0].numel()), dim=1).values
        return self.evidence_scale * strongest.mean(dim=1) + self.evidence_offset


class ReasonCDPreTrainedModel(PreTrainedModel):
    config_class = ReasonCDConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer", "Block", "TwoWayAttentionBlock"]
    # Loaded with `dtype=torch.bfloat16`/`float16` (or around a quantised language model), these stay float32, as
    # they do under `.to(dtype)` (`Float32Buffers`): SAM's positional-encoding matrix, which segment-anything
    # multiplies by a float32 grid, and every batch-norm and `[SEG]`-standardiser running statistic. Matched as
    # substrings of the weight names.
    _keep_in_fp32_modules_strict = ["sam_prompt_encoder.pe_layer", "running_mean", "running_var"]
    # PEFT would otherwise train two copies of tied matrices (LLaMA-2 itself is untied).
    _tied_weights_keys = {}
    # The loss mixes CE and mask terms: Trainer must scale it for gradient accumulation itself.
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # Parameters segment-anything creates outside Linear/Conv/Norm layers.
        if isinstance(module, ImageEncoderViT) and module.pos_embed is not None:
            init.zeros_(module.pos_embed)
        elif isinstance(module, SamAttention) and module.use_rel_pos:
            init.zeros_(module.rel_pos_h)
            init.zeros_(module.rel_pos_w)
        elif isinstance(module, PositionEmbeddingRandom):
            init.normal_(module.positional_encoding_gaussian_matrix)
        elif getattr(module, "zero_init", False):  # e.g. FiLM's output layer: training starts from the identity
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, SegStateStandardizer):
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)


class ReasonCDForChangeDetection(ReasonCDGenerationMixin, ReasonCDPreTrainedModel):
    """
    ReasonCD: answers a question about the change between two images with text and a change mask.

    Trainable in the paper's recipe: `multi_modal_projector`, `text_hidden_fc`, `sam_mask_decoder`,
    `feature_fusion`, LoRA on the language model and its new token rows; see `trainable_module_names`.
    """

    # Modules trained in full (besides LoRA and token rows); frozen: vision_tower, sam_image_encoder,
    # sam_prompt_encoder and the language model's base weights.
    trainable_module_names = ("multi_modal_projector", "text_hidden_fc", "sam_mask_decoder", "feature_fusion")
    # Trained in full too when the config switches them on (options beyond the paper).
    optional_module_names = ("seg_state_norm", "prompt_film", "change_projector", "presence", "question_mask",
                             "croi_head", "croi_reader", "fusion_film", "croi_plan", "land_cover", "order_head",
                             "land_cover_evidence")
    frozen_module_names = ("vision_tower", "sam_image_encoder", "sam_prompt_encoder")
    # Teacher-forced passes run the prompt up to `<p>` once per pair (`_run_language_model`); False: once per row.
    share_prompt_prefix = True
    # Kept out of bitsandbytes quantisation (`bitsandbytes_config`): everything but the language model's decoder
    # layers. The encoders and the mask path are small next to a 7B decoder, and the [SEG] decision is read off
    # `lm_head`. transformers matches these as prefixes of module names (and `lm_head` as a suffix).
    unquantized_module_names = (frozen_module_names + trainable_module_names + optional_module_names
                                + ("language_model.lm_head",))

    @classmethod
    def bitsandbytes_config(cls, bits: int, compute_dtype: torch.dtype = torch.bfloat16):
        """
        The `BitsAndBytesConfig` that loads only the language model's decoder layers in 8-bit (LLM.int8) or 4-bit
        (NF4, double quantisation), for `from_pretrained(..., quantization_config=...)`; `compute_dtype` is the
        4-bit layers' matmul dtype (LLM.int8 computes in float16 whatever it is). A plain
        `BitsAndBytesConfig(load_in_4bit=True)` would quantise CLIP and SAM's linear layers as well.
        """
        if bits not in (4, 8) or isinstance(bits, bool):
            raise ValueError(f"bits={bits!r}: ReasonCD's language model can be loaded in 8 or 4 bits")
        # find_spec, not `import bitsandbytes`: the Hub loader requires every module this file imports.
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ImportError(f"loading ReasonCD in {bits} bits needs bitsandbytes: pip install 'bitsandbytes>=0.46.1' "
                              "(in the ReasonCD repository: pip install -e .[quant])")
        from transformers import BitsAndBytesConfig

        skip = list(cls.unquantized_module_names)
        if bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=skip)

    @classmethod
    def quantized_loading_options(cls, bits: int, device: str | torch.device | None = None) -> dict:
        """
        `from_pretrained` keyword arguments that load the language model in `bits` (8 or 4): `quantization_config`
        from `bitsandbytes_config`, the `dtype` of the unquantised parts (bf16 on a GPU that has it, else fp32) and
        a `device_map` placing everything on `device` (default: CUDA when available), since a bitsandbytes model
        gets its device while loading and cannot be moved afterwards.
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        return {"quantization_config": cls.bitsandbytes_config(bits, compute_dtype=dtype), "dtype": dtype,
                "device_map": {"": device}}

    def __init__(self, config: ReasonCDConfig) -> None:
        super().__init__(config)
        text_hidden = config.text_config.hidden_size
        sam = config.sam_config
        prompt_dim = sam.prompt_embed_dim
        grid = sam.embedding_grid

        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = nn.Linear(config.vision_config.hidden_size, text_hidden)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.text_hidden_fc = nn.Sequential(
            nn.Linear(text_hidden, text_hidden), nn.ReLU(), nn.Linear(text_hidden, prompt_dim)
        )
        self.sam_image_encoder = ImageEncoderViT(
            img_size=sam.image_size,
            patch_size=sam.patch_size,
            embed_dim=sam.encoder_embed_dim,
            depth=sam.encoder_depth,
            num_heads=sam.encoder_num_heads,
            mlp_ratio=sam.encoder_mlp_ratio,
            out_chans=prompt_dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=sam.encoder_layer_norm_eps),
            use_rel_pos=True,
            window_size=sam.encoder_window_size,
            global_attn_indexes=tuple(sam.encoder_global_attn_indexes),
        )
        self.sam_prompt_encoder = PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(sam.image_size, sam.image_size),
            mask_in_chans=sam.mask_in_chans,
        )
        self.sam_prompt_encoder.pe_layer = Float32PositionEmbedding(prompt_dim // 2)
        self.sam_mask_decoder = MaskDecoder(
            num_multimask_outputs=sam.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=sam.decoder_depth,
                embedding_dim=prompt_dim,
                mlp_dim=sam.decoder_mlp_dim,
                num_heads=sam.decoder_num_heads,
            ),
            transformer_dim=prompt_dim,
            iou_head_depth=sam.iou_head_depth,
            iou_head_hidden_dim=sam.iou_head_hidden_dim,
        )
        self.feature_fusion = MultiScaleFeatureFusion(
            sam_channels=prompt_dim, out_channels=prompt_dim, config=config.feature_fusion_config,
            enabled=config.use_feature_fusion,
        )
        # Options beyond the paper (off in the `reasoncd-7b` preset): see `ReasonCDConfig`.
        self.seg_state_norm = SegStateStandardizer(text_hidden) if config.seg_state_norm else None
        self.prompt_film = PromptFiLM(text_hidden, prompt_dim) if config.mask_conditioning == "film" else None
        self.change_projector = nn.Linear(prompt_dim, text_hidden) if config.change_tokens else None
        if self.change_projector is not None:
            self.change_projector.zero_init = True  # starts as the paper's image tokens
        self.presence = PresenceHead(text_hidden, prompt_dim) if config.presence_head else None
        fusion = config.feature_fusion_config
        date_channels = prompt_dim + fusion.fpn_levels * fusion.fpn_channels  # the fusion module's per-date features
        self.order_head = None
        if config.order_head:
            read_channels = {"dates": date_channels, "land_cover": len(config.land_cover_classes)}
            self.order_head = OrderHead(text_hidden, prompt_dim, read_channels.get(config.order_head_reads))
        self.question_mask = QuestionMask(text_hidden) if config.question_mask else None
        self.croi_head = nn.Linear(text_hidden, len(config.croi_units)) if config.croi_units else None
        self.land_cover = (LandCoverHead(prompt_dim, len(config.land_cover_classes),
                                         date_channels if config.land_cover_reads == "dates" else None)
                           if config.land_cover_classes else None)
        self.croi_reader = nn.Linear(len(config.croi_units), text_hidden) if config.presence_reads_croi else None
        self.croi_plan = nn.Linear(len(config.croi_units), text_hidden) if config.croi_plan else None
        if self.croi_plan is not None:
            self.croi_plan.zero_init = True  # starts as the presence decision alone
        self.fusion_film = PromptFiLM(text_hidden, date_channels) if config.fusion_film else None
        self.land_cover_evidence = (LandCoverEvidence(config.croi_units, config.land_cover_classes)
                                    if config.presence_reads_land_cover else None)
        self.trainable_module_names = type(self).trainable_module_names + tuple(
            name for name in self.optional_module_names if getattr(self, name) is not None)
        self.unused_module_names = self._unused_module_names()
        self.post_init()

    def _unused_module_names(self) -> tuple[str, ...]:
        """
        Parts of the pretrained components that no output of ReasonCD reads, so that no loss can reach them; training
        freezes them (docs/ARCHITECTURE.md, "What is trained"). SAM's IoU head and the hypernetworks of its three
        multi-mask outputs: one mask is decoded per `[SEG]` and its quality score is never used. CLIP's layers after
        the feature layer and its final norm: the image tokens come from an earlier layer.
        """
        decoder = self.sam_mask_decoder
        names = ["sam_mask_decoder.iou_prediction_head"]
        names += [f"sam_mask_decoder.output_hypernetworks_mlps.{i}" for i in range(1, decoder.num_mask_tokens)]
        layers = self.config.vision_config.num_hidden_layers
        feature_layer = self.config.vision_feature_layer
        used_layers = feature_layer if feature_layer >= 0 else layers + 1 + feature_layer
        names += [f"vision_tower.encoder.layers.{i}" for i in range(used_layers, layers)]
        names += [name for name in ("vision_tower.post_layernorm",) if self.get_submodule(name) is not None]
        return tuple(names)

    # --- embeddings (delegated so resize_token_embeddings and PEFT find them) ---
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    # --- 1. frozen encoders ---
    def encode_frozen_images(self, pixel_values: torch.Tensor, sam_pixel_values: torch.Tensor):
        """CLIP patch features `(n, image_seq_length, vision_hidden)` and SAM embeddings `(n, C, h, w)` of n images,
        one batched call per encoder (also what the training feature cache stores per image)."""
        sam_dtype = self.sam_image_encoder.patch_embed.proj.weight.dtype
        return self.vision_features(pixel_values), self.sam_image_encoder(sam_pixel_values.to(sam_dtype))

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP patch features of the configured layer, CLS dropped: `(n, image_seq_length, vision_hidden)`."""
        hidden = self.vision_tower(pixel_values.to(self.vision_tower.dtype), output_hidden_states=True).hidden_states
        # CLIP prepends one class token to its patches.
        return hidden[self.config.vision_feature_layer][:, -self.config.image_seq_length:]

    def encode_frozen(
        self,
        pixel_values_t1: torch.Tensor,
        pixel_values_t2: torch.Tensor,
        sam_pixel_values_t1: torch.Tensor,
        sam_pixel_values_t2: torch.Tensor,
    ) -> ReasonCDFrozenFeatures:
        """Runs the frozen encoders once over both dates of P pairs."""
        pairs = pixel_values_t1.shape[0]
        vision, sam = self.encode_frozen_images(
            torch.cat([pixel_values_t1, pixel_values_t2], dim=0),
            torch.cat([sam_pixel_values_t1, sam_pixel_values_t2], dim=0),
        )
        return ReasonCDFrozenFeatures(
            vision_features_t1=vision[:pairs], vision_features_t2=vision[pairs:],
            sam_features_t1=sam[:pairs], sam_features_t2=sam[pairs:],
        )

    def _prepare_inputs(self, input_ids, attention_mask, pair_index, frozen_features, **pixels):
        """Defaults for the optional inputs, and the frozen features (given, e.g. cached, or computed now)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if pair_index is None:
            pair_index = torch.arange(input_ids.shape[0], device=input_ids.device)
        if frozen_features is not None and frozen_features.vision_features_t1 is not None:
            return attention_mask, pair_index, frozen_features
        if frozen_features is not None and frozen_features.sam_features_t1 is not None:
            # SAM's features given (cached) without CLIP's: a CLIP being trained encodes its images now.
            pairs = pixels["pixel_values_t1"].shape[0]
            vision = self.vision_features(torch.cat([pixels["pixel_values_t1"], pixels["pixel_values_t2"]]))
            frozen_features.vision_features_t1, frozen_features.vision_features_t2 = vision[:pairs], vision[pairs:]
            return attention_mask, pair_index, frozen_features
        missing = [name for name, value in pixels.items() if value is None]
        if missing:
            raise ValueError(f"ReasonCD needs the processor's image inputs; missing: {', '.join(missing)}")
        return attention_mask, pair_index, self.encode_frozen(**pixels)

    # --- 2. language model inputs ---
    def _merge_image_tokens(
        self, input_ids: torch.Tensor, features: ReasonCDFrozenFeatures, pair_index: torch.Tensor,
        mask_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Token embeddings with the projected CLIP features of each row's pair at its `<T1>`/`<T2>` placeholders;
        with `change_tokens`, the `<T2>` tokens also carry the pair's fused change embedding (`mask_embeds`).
        """
        embeds = self.get_input_embeddings()(input_ids)
        n = self.config.image_seq_length
        change = self._change_tokens(mask_embeds) if self.change_projector is not None else None
        for token_id, vision, extra in ((self.config.t1_token_id, features.vision_features_t1, None),
                                        (self.config.t2_token_id, features.vision_features_t2, change)):
            slots = input_ids == token_id
            counts = slots.sum(dim=1)
            if not bool((counts == n).all()):
                raise ValueError(
                    f"each prompt must hold {n} image placeholder tokens (id {token_id}) per date, found "
                    f"{counts.tolist()}; build inputs with ReasonCDProcessor, which expands them"
                )
            tokens = self.multi_modal_projector(vision.to(self.multi_modal_projector.weight.dtype))
            if extra is not None:
                tokens = tokens + extra.to(tokens.dtype)
            if self.training and self.config.image_token_dropout:  # per pair, so a shared prompt stays shared
                kept = torch.rand(tokens.shape[:2], device=tokens.device) >= self.config.image_token_dropout
                tokens = tokens * kept.unsqueeze(-1).to(tokens.dtype)
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), tokens[pair_index].to(embeds.dtype))
        return embeds

    def _change_tokens(self, mask_embeds: torch.Tensor) -> torch.Tensor:
        """The fused change embedding `(P, C, h, w)` pooled to CLIP's patch grid (row-major, as CLIP's patches) and
        projected into the language model: `(P, image_seq_length, hidden_size)`."""
        if mask_embeds is None:
            raise ValueError("change_tokens needs the fused change embedding before the language model runs")
        grid = math.isqrt(self.config.image_seq_length)
        pooled = F.adaptive_avg_pool2d(mask_embeds, grid).flatten(2).transpose(1, 2)
        return self.change_projector(pooled.to(self.change_projector.weight.dtype))

    @staticmethod
    def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
        # The same rule as `generate` uses, so teacher-forced and cached runs see identical positions.
        return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)

    # --- 2b. the teacher-forced language model pass ---
    def _run_language_model(self, inputs_embeds, attention_mask, input_ids, pair_index, kept_logits: int = 0):
        """
        The language model over every row, teacher-forced: logits `(B, L, vocab)` (with `kept_logits` > 0, only
        the last `kept_logits` positions') and last-layer states `(B, L, hidden)`, in the rows' own (left-padded)
        layout.

        Every question about a pair repeats the same prompt up to `<p>`, both images' tokens included: most of each
        sequence. Outside training, when a batch holds fewer pairs than rows, that prefix runs once per pair and its
        keys and values serve each of the pair's questions (as in `generate`), gradients included: the result is
        that of one pass over every row (a test compares both, losses and gradients too). Training keeps one pass
        per row (see `_teacher_forced_prefix_length`).
        """
        prefix_length = self._teacher_forced_prefix_length(input_ids, attention_mask, pair_index)
        if not prefix_length:
            out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False,
                                      position_ids=self._position_ids(attention_mask), output_hidden_states=True,
                                      logits_to_keep=kept_logits)
            return out.logits, out.hidden_states[-1]
        # Re-laid as prefix | padding | suffix: the suffix keeps its place, the prefix moves in front of the padding.
        rows, length = input_ids.shape
        padding = (attention_mask == 0).sum(dim=1, keepdim=True)
        slot = torch.arange(length, device=input_ids.device)[None].expand(rows, -1)
        source = torch.where(slot < prefix_length, slot + padding,
                             torch.where(slot < prefix_length + padding, slot - prefix_length, slot))
        layout_mask = attention_mask.gather(1, source)
        layout_embeds = inputs_embeds.gather(1, source[..., None].expand(-1, -1, inputs_embeds.shape[-1]))
        first_rows, pair_slots = pair_rows(pair_index)
        cache = DynamicCache(config=self.language_model.config)
        prefix = self.language_model(inputs_embeds=layout_embeds[first_rows, :prefix_length], cache=cache,
                                     use_cache=True, output_hidden_states=True)
        row_cache = DynamicCache(ddp_cache_data=[(layer.keys[pair_slots], layer.values[pair_slots])
                                                 for layer in cache.layers])
        suffix = self.language_model(inputs_embeds=layout_embeds[:, prefix_length:], attention_mask=layout_mask,
                                     position_ids=self._position_ids(layout_mask)[:, prefix_length:],
                                     cache=row_cache, use_cache=True, output_hidden_states=True)
        back = source.argsort(dim=1)

        def relaid(prefix_part, suffix_part):
            whole = torch.cat([prefix_part[pair_slots], suffix_part.to(prefix_part.dtype)], dim=1)
            return whole.gather(1, back[..., None].expand(-1, -1, whole.shape[-1]))
        return relaid(prefix.logits, suffix.logits), relaid(prefix.hidden_states[-1], suffix.hidden_states[-1])

    def _teacher_forced_prefix_length(self, input_ids, attention_mask, pair_index) -> int:
        """The length of the prompt up to `<p>` when the rows can share it (see `_run_language_model`), else 0."""
        if not self.share_prompt_prefix or len(set(pair_index.tolist())) == input_ids.shape[0]:
            return 0
        if self.training:
            # Same losses and gradients without dropout, but one LoRA dropout draw on the prefix for all of a pair's
            # questions, and that dropout is the tiny language model's one regulariser: in three quickstart runs
            # it trained clearly worse (final validation fidelity 0.53-0.59 against 0.68-0.73), like runs without
            # dropout (README, "Experiments 4"). Training keeps one pass per row.
            return 0
        if not bool((attention_mask.cummax(dim=1).values == attention_mask).all()):  # padded on the left only
            return 0
        prefix_length = self._shared_prefix_length(input_ids, attention_mask)
        if not prefix_length:
            return 0
        padding = (attention_mask == 0).sum(dim=1, keepdim=True)
        prefixes = input_ids.gather(1, torch.arange(prefix_length, device=input_ids.device)[None] + padding)
        first_rows, pair_slots = pair_rows(pair_index)
        same = bool((prefixes == prefixes[first_rows][pair_slots]).all())  # each row's prompt is its pair's
        return prefix_length if same else 0

    # --- 3./4. fused image embedding and mask decoding ---
    def mask_embeddings(self, features: ReasonCDFrozenFeatures, sam_pixel_values_t1, sam_pixel_values_t2):
        """
        The question-independent image embedding per pair, `(P, prompt_embed_dim, h, w)` (the change tokens and the
        presence decision read it; without `fusion_film`, the mask decoder too), and with `fusion_film` the fusion
        module's per-date features `(2, P, C, h, w)`, which each question conditions before they are fused for its
        mask (else None).
        """
        sam_t1, sam_t2 = features.sam_features_t1, features.sam_features_t2
        if self.fusion_film is None:
            return self.feature_fusion(sam_t1, sam_t2, sam_pixel_values_t1, sam_pixel_values_t2), None
        date_features = torch.stack(self.feature_fusion.date_features(sam_t1, sam_t2, sam_pixel_values_t1,
                                                                      sam_pixel_values_t2))
        return self.feature_fusion.fuse(*date_features), date_features

    def decode_masks(self, image_embeddings: torch.Tensor, seg_hidden_states: torch.Tensor,
                     standardized: bool = False, date_features: torch.Tensor | None = None) -> torch.Tensor:
        """
        SAM's mask decoder for N prompts at once, each with its own image embedding.

        This is segment-anything's `MaskDecoder.predict_masks` with `multimask_output=False`, inlined for two
        reasons: upstream repeats one image embedding for all prompts of an image, while here every question brings
        its own (its pair's, and with FiLM its own modulation of it), so N questions about P pairs decode in one
        batched call; and only the single-mask output is needed, so the IoU head is skipped. A test checks that it
        equals upstream's decoder on the same inputs.

        Args:
            image_embeddings: `(N, C, h, w)`, already gathered per prompt.
            seg_hidden_states: `(N, hidden_size)`.
            standardized: the states are already prompts in the standardised space (the question mask's), so
                `seg_state_norm` is skipped.
            date_features: with `fusion_film` (required then), the fusion module's per-date features gathered per
                prompt, `(2, N, C, h, w)`: each prompt scales and shifts both dates' features alike before they are
                fused, and that fusion replaces `image_embeddings`.
        Returns: low-resolution change logits `(N, 4h, 4w)` (the single-mask output).
        """
        decoder = self.sam_mask_decoder
        if self.seg_state_norm is not None and not standardized:
            seg_hidden_states = self.seg_state_norm(seg_hidden_states)
        if self.fusion_film is not None:
            if date_features is None:
                raise ValueError("fusion_film: decode_masks needs the per-date features (mask_embeddings' second "
                                 "output, gathered per prompt)")
            image_embeddings = self.feature_fusion.fuse(*(self.fusion_film(date, seg_hidden_states)
                                                          for date in date_features))
        prompts = self.text_hidden_fc(seg_hidden_states.to(next(self.text_hidden_fc.parameters()).dtype))
        if self.prompt_film is not None:
            image_embeddings = self.prompt_film(image_embeddings, seg_hidden_states)
        n, channels, h, w = image_embeddings.shape
        # segment-anything's prompt encoder takes no text: the sparse prompt is the projected [SEG] state alone,
        # the dense prompt is its "no mask" embedding.
        dense = self.sam_prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, h, w)
        positional = self.sam_prompt_encoder.get_dense_pe().expand(n, -1, -1, -1)
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(n, -1, -1), prompts.unsqueeze(1)], dim=1)
        hs, src = decoder.transformer(image_embeddings + dense.to(image_embeddings.dtype),
                                      positional.to(image_embeddings.dtype), tokens.to(image_embeddings.dtype))
        mask_tokens = hs[:, 1 : 1 + decoder.num_mask_tokens]
        upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(n, channels, h, w))
        # Only the single-mask output's hypernetwork runs (see `unused_module_names`).
        hyper = decoder.output_hypernetworks_mlps[0](mask_tokens[:, 0])
        b, c, uh, uw = upscaled.shape
        return (hyper.unsqueeze(1) @ upscaled.reshape(b, c, uh * uw)).reshape(b, uh, uw)

    def swapped_mask_embeddings(self, features: ReasonCDFrozenFeatures, sam_pixel_values_t1, sam_pixel_values_t2):
        """Each pair fused with T1 and T2 swapped, `(P, prompt_embed_dim, h, w)` (what the order is learned from)."""
        return self.feature_fusion(features.sam_features_t2, features.sam_features_t1, sam_pixel_values_t2,
                                   sam_pixel_values_t1)

    def order_readings(self, features: ReasonCDFrozenFeatures, sam_pixel_values_t1, sam_pixel_values_t2,
                       mask_embeds: torch.Tensor):
        """What the order head compares per pair, as given and with the dates swapped (`order_head_reads`): the
        pair fused in both orders (`mask_embeds` and `swapped_mask_embeddings`), the later date's own features
        and the earlier's (`date_features`), or the land-cover head's log-probabilities for the later date and
        the earlier, `(P, C, h, w)` each. Swapping the dates exchanges the two."""
        reads = self.config.order_head_reads
        if reads == "fused":
            return mask_embeds, self.swapped_mask_embeddings(features, sam_pixel_values_t1, sam_pixel_values_t2)
        earlier, later = self.feature_fusion.date_features(features.sam_features_t1, features.sam_features_t2,
                                                           sam_pixel_values_t1, sam_pixel_values_t2)
        if reads == "land_cover":
            earlier, later = self.land_cover(earlier, later).float().log_softmax(dim=2).unbind(dim=1)
        return later, earlier

    def land_cover_logits(self, features: ReasonCDFrozenFeatures, sam_pixel_values_t1, sam_pixel_values_t2,
                          mask_embeds: torch.Tensor, date_features: torch.Tensor | None = None,
                          order_readings: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The land-cover head's logits per pair from what `land_cover_reads` names: the fused `mask_embeds`
        (`(P, 2, K + 1, h, w)`), or each date's own features (`(P, 2, K, h, w)`; taken from `date_features` or the
        order head's readings where this pass has them already, else computed); where the order head reads this
        head, its readings."""
        if self.config.land_cover_reads == "fused":
            return self.land_cover(mask_embeds)
        if order_readings is not None and self.config.order_head_reads == "land_cover":
            # its log-probabilities: the same cross-entropy as the logits they come from
            return torch.stack(order_readings[::-1], dim=1)
        if date_features is not None:
            earlier, later = date_features
        elif order_readings is not None and self.config.order_head_reads == "dates":
            later, earlier = order_readings
        else:
            earlier, later = self.feature_fusion.date_features(features.sam_features_t1, features.sam_features_t2,
                                                               sam_pixel_values_t1, sam_pixel_values_t2)
        return self.land_cover(earlier, later)

    def _order_loss(self, swapped, mask_embeds, date_features, rows, seg_hidden, question_states, order_logits,
                    order_masks, order_symmetric, masks, reshaped_sizes, pair_index,
                    question_masks=None, order_readings=None) -> torch.Tensor:
        """
        The order terms of `rows`, weighted: each row's pair is fused with T1 and T2 swapped, and its truth in that
        order is `order_masks`. With `order_loss_weight`, the row's first `[SEG]` state decodes a mask over it
        (BCE and Dice); with `order_presence_loss_weight`, its presence decision reads it from the row's state at
        `</p>` (`question_states`) and is trained toward "present" only where that truth is not empty (BCE), and
        its question mask toward that truth (BCE and Dice). Every pixel that changed for a question about the pair
        outside that truth (the asked change itself among them) is a hard negative, as in `mask_losses`. With
        `order_head`, that head learns these rows (given order: holds; swapped: holds where that truth is not
        empty) and the rows of `order_symmetric` (both orders hold), from its logits in the given order
        (`order_logits`), inside `question_masks` (the rows' own masks in the given order) where
        `order_head_pooling` says so, from `order_readings`. `swapped`: `swapped_mask_embeddings`.
        """
        cfg = self.config
        if self.order_head is not None:
            loss = cfg.order_head_loss_weight * self._order_head_loss(
                order_logits, *order_readings, question_states, rows, order_masks, order_symmetric, pair_index,
                question_masks)
            rows = rows[~order_symmetric[rows]]  # the terms below need the opposite direction's truth
        else:
            loss = 0.0
        if not rows.numel():
            return loss
        pairs = pair_index[rows]
        dates = None if date_features is None else date_features.flip(0)[:, pairs]
        changed = changed_in_each_rows_pair(masks if masks.dim() == 4 else masks[:, None], pair_index)[rows]
        truths, every_row = order_masks[rows], torch.ones_like(rows, dtype=torch.bool)[:, None]

        def mask_term(logits):
            bce, dice = mask_losses(logits[:, None], every_row, truths, reshaped_sizes, pairs, cfg, changed=changed)
            return cfg.bce_loss_weight * bce + cfg.dice_loss_weight * dice

        if cfg.order_loss_weight:
            loss = loss + cfg.order_loss_weight * mask_term(
                self.decode_masks(swapped[pairs], seg_hidden[rows], date_features=dates))
        if cfg.order_presence_loss_weight:
            logits, question_masks = self.question_presence(question_states[rows], swapped[pairs], dates)
            present = (truths > 0.5).flatten(1).any(dim=1)
            term = F.binary_cross_entropy_with_logits(logits.float(), present.float())
            if question_masks is not None:
                term = term + cfg.question_mask_loss_weight * mask_term(question_masks)
            loss = loss + cfg.order_presence_loss_weight * term
        return loss

    def _order_head_loss(self, order_logits, as_given, as_swapped, question_states, rows, order_masks,
                         order_symmetric, pair_index, question_masks=None) -> torch.Tensor:
        """The order head's BCE over `rows` read in both orders (see `_order_loss`); `order_logits` `(B,)`: its
        logits in the given order."""
        pairs, given = pair_index[rows], order_logits[rows]
        within = self.order_head_within(question_masks)
        # The same cells in both orders, so that the swapped reading stays the given one's opposite.
        other = self.order_head(question_states[rows], as_swapped[pairs], as_given[pairs],
                                question_masks=None if within is None else within[rows])
        holds_swapped = order_symmetric[rows] | (order_masks[rows] > 0.5).flatten(1).any(dim=1)
        logits = torch.cat([given, other]).float()
        return F.binary_cross_entropy_with_logits(logits, torch.cat([torch.ones_like(given), holds_swapped]).float())

    def order_head_within(self, question_masks: torch.Tensor | None) -> torch.Tensor | None:
        """The question masks the order head reads inside (`order_head_pooling="question_mask"`), else None."""
        return question_masks if self.config.order_head_pooling == "question_mask" else None

    def question_read(self, present: torch.Tensor, units: torch.Tensor | None = None) -> torch.Tensor:
        """
        The vectors `(N, hidden)` added to every token after `</p>`: the presence decision (`present`: bool `(N,)`)
        and, with `croi_plan`, the asked units (`units`: `(N, len(croi_units))`, 0/1) mapped to the state's width.
        """
        vectors = self.presence.decision(present)
        if self.croi_plan is None:
            return vectors
        return vectors + self.croi_plan(units.to(self.croi_plan.weight.dtype)).to(vectors.dtype)

    def question_presence(self, states: torch.Tensor, change_embeddings: torch.Tensor,
                          date_features: torch.Tensor | None = None):
        """
        The presence decision of each question from its state at `</p>` `(N, hidden)` and its pair's fused
        embedding `(N, C, h, w)` (with `fusion_film`, also its pair's per-date features `(2, N, C', h, w)`, which
        its question mask reads): logits `(N,)`, and with `question_mask` the question masks' low-resolution logits
        `(N, 4h, 4w)` whose evidence the logits include (else None). With `presence_reads_land_cover`, the logits
        also include the evidence composed from the land-cover head and the CRoI head (`LandCoverEvidence`).
        """
        asked = None
        if self.croi_reader is not None or self.land_cover_evidence is not None:
            asked = torch.sigmoid(self.croi_head(states)).detach()
        if self.croi_reader is not None:
            # What was asked, not how: the wording of a training question cannot carry its answer.
            states = self.croi_reader(asked.to(self.croi_reader.weight.dtype))
        logits = self.presence(states, change_embeddings)
        if self.land_cover_evidence is not None:
            logits = logits + self.land_cover_evidence(self.land_cover(change_embeddings), asked).to(logits.dtype)
        if self.question_mask is None:
            return logits, None
        question_masks = self.decode_masks(change_embeddings, self.question_mask(states), standardized=True,
                                           date_features=date_features)
        return logits + self.question_mask.evidence(question_masks).to(logits.dtype), question_masks

    def presence_margin(self, presence_logits: torch.Tensor) -> torch.Tensor:
        """The presence logits less `presence_threshold`: positive where a question is decided present."""
        return presence_logits - self.config.presence_threshold

    def _masks_for_targets(self, mask_embeds, pair_index, target_present, target_hidden, date_features=None):
        """The logits `(B, K, h, w)` of every `[SEG]` state (`target_hidden` `(B, K, hidden)`), all decoded in one
        batched call, each over its row's pair; zeros where `target_present` `(B, K)` is False. `date_features`:
        `mask_embeddings`' second output."""
        h, w = mask_embeds.shape[-2:]
        scale = self.config.sam_config.mask_upscale
        out = target_hidden.new_zeros(*target_present.shape, scale * h, scale * w, dtype=mask_embeds.dtype)
        rows, ks = target_present.nonzero(as_tuple=True)
        if rows.numel():
            pairs = pair_index[rows]
            out[rows, ks] = self.decode_masks(mask_embeds[pairs], target_hidden[rows, ks],
                                              date_features=per_prompt(date_features, pairs)).to(out.dtype)
        return out

    # --- the full teacher-forced pass ---
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values_t1: torch.FloatTensor | None = None,
        pixel_values_t2: torch.FloatTensor | None = None,
        sam_pixel_values_t1: torch.FloatTensor | None = None,
        sam_pixel_values_t2: torch.FloatTensor | None = None,
        pair_index: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        masks: torch.Tensor | None = None,
        reshaped_sizes: torch.LongTensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        frozen_features: ReasonCDFrozenFeatures | None = None,
        croi_targets: torch.Tensor | None = None,
        order_masks: torch.Tensor | None = None,
        order_known: torch.Tensor | None = None,
        order_symmetric: torch.Tensor | None = None,
        land_cover: torch.Tensor | None = None,
        answer_logits_only: bool = False,
        return_dict: bool | None = None,
    ) -> ReasonCDOutput:
        r"""
        Args:
            input_ids (`(B, L)`): prompts (and, for training, answers) with placeholders expanded.
            pixel_values_t1/t2 (`(P, 3, H_clip, W_clip)`) and sam_pixel_values_t1/t2 (`(P, 3, S, S)`): P image
                pairs; row b of the batch is about pair `pair_index[b]` (default: row b is pair b).
            labels (`(B, L)`): answer token ids, -100 elsewhere.
            masks (`(B, H, W)`): ground-truth change masks at each input's own size (any value > 0.5 = change);
                used for rows whose sequence holds `[SEG]`.
            reshaped_sizes (`(B or P, 2)`): size after SAM's longest-side resize (needed with `masks`).
            frozen_features: precomputed CLIP/SAM features (the training cache); skips the frozen encoders.
            croi_targets (`(B, len(croi_units))`): with a CRoI head, 1 for each unit the question asks about, 0
                for the others, a row of -1 where unknown (the collator builds it).
            order_masks (`(B, H, W)`), order_known (`(B,)` bool): with `learns_date_order`, each row's truth with T1
                and T2 swapped, where it has one (the collator builds them with `order_truths`).
            order_symmetric (`(B,)` bool): with `order_head`, the present rows whose question names no direction
                (the same truth in either order; the collator builds it with `order_truths`).
            land_cover (`(P, 2, H, W)`): with `land_cover_classes`, each pair's per-date labels: an index into
                `land_cover_classes` where the pixel changed, `len(land_cover_classes)` where it did not, -100 where
                unknown (the collator builds them).
            image_sizes: accepted and unused, so that the processor's output can be passed as `**inputs`; masks are
                compared with the ground truth at its own size.
            answer_logits_only: with `labels`, compute `logits` only for the last positions of every row, from the
                one before the earliest answer token on (rows are padded on the left), as the loss needs: the
                language model's head then skips the prompts, most of each sequence (the trainer sets it).
            return_dict: accepted for transformers' calling convention; the output is always a `ReasonCDOutput`.
        """
        attention_mask, pair_index, features = self._prepare_inputs(
            input_ids, attention_mask, pair_index, frozen_features,
            pixel_values_t1=pixel_values_t1, pixel_values_t2=pixel_values_t2,
            sam_pixel_values_t1=sam_pixel_values_t1, sam_pixel_values_t2=sam_pixel_values_t2,
        )
        mask_embeds, date_features = self.mask_embeddings(features, sam_pixel_values_t1, sam_pixel_values_t2)
        # Only the embeddings see a noised question: positions, labels and the prefix rule read the real tokens.
        read_ids = (noised_question_tokens(input_ids, self.config)
                    if self.training and self.config.question_token_dropout else input_ids)
        inputs_embeds = self._merge_image_tokens(read_ids, features, pair_index, mask_embeds)
        kept_logits = answer_logit_count(labels) if answer_logits_only and labels is not None else 0
        run_language_model = partial(self._run_language_model, attention_mask=attention_mask, input_ids=input_ids,
                                     pair_index=pair_index, kept_logits=kept_logits)
        presence_logits = question_masks = order_logits = swapped = order_readings = None
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        # The presence decision and the CRoI head both read the state at </p> (the question read).
        question_end = None
        if self.presence is not None or self.croi_head is not None:
            question_end = question_end_positions(input_ids, self.config.p_end_token_id)
        read_after = None  # (B, L, hidden): what the presence decision adds to every token after </p>
        if self.presence is not None:
            # In training, the reference's decision (whether its answer points at a mask) follows </p>, as its
            # tokens do. In evaluation, the head's own, as in generation: the states up to </p> do not depend on
            # the decision, so the head reads them from a first pass, and a second runs only if it disagrees.
            # With `croi_plan` the reference's units (the head's own outside training) join the decision.
            after = (torch.arange(input_ids.shape[1], device=input_ids.device)[None] > question_end[:, None])
            after = after.unsqueeze(-1).to(inputs_embeds.dtype)
            decided = (input_ids[:, 1:] == self.config.seg_token_id).any(dim=1)
            planned = None if self.croi_plan is None else reference_units(
                croi_targets, input_ids.shape[0], len(self.config.croi_units), input_ids.device)
            read_after = after * self.question_read(decided, planned)[:, None]
        if self.training and self.config.scheduled_sampling and labels is not None:
            # The answer as the model goes on from the reference: a pass without gradients predicts every answer
            # token, and a share of those it gets wrong replace the reference's tokens in the pass that learns,
            # so that the `[SEG]` state learns from words as generation gives them (a cover the images do not show
            # the language model, a direction it mistakes), not only from the reference's.
            with torch.no_grad():
                first_logits, _ = run_language_model(
                    inputs_embeds if read_after is None else inputs_embeds + read_after)
            fed_ids = self_fed_answer_tokens(read_ids, input_ids, labels, first_logits, self.config)
            # Only answer words change: their embeddings are looked up again, the image tokens (and the draw of
            # their dropout) are the first pass's.
            fed = (fed_ids != read_ids).unsqueeze(-1)
            inputs_embeds = torch.where(fed, self.get_input_embeddings()(fed_ids).to(inputs_embeds.dtype),
                                        inputs_embeds)
        if self.presence is None:
            logits, last_hidden = run_language_model(inputs_embeds)
        else:
            logits, last_hidden = run_language_model(inputs_embeds + read_after)
            question_states = last_hidden[rows, question_end]
            presence_logits, question_masks = self.question_presence(
                question_states, mask_embeds[pair_index], per_prompt(date_features, pair_index))
            own = self.presence_margin(presence_logits) > 0
            if self.order_head is not None:
                order_readings = self.order_readings(features, sam_pixel_values_t1, sam_pixel_values_t2, mask_embeds)
                if self.config.order_head_reads == "fused":
                    swapped = order_readings[1]  # the other order terms read it too
                order_logits = self.order_head(question_states, *(r[pair_index] for r in order_readings),
                                               question_masks=self.order_head_within(question_masks))
                own = own & (order_logits > 0)
            own_units = None if self.croi_plan is None else self.croi_head(last_hidden[rows, question_end]) > 0
            differs = bool((own != decided).any()) or (own_units is not None and bool((own_units != planned).any()))
            if not self.training and differs:
                read = self.question_read(own, own_units)
                logits, last_hidden = run_language_model(inputs_embeds + after * read[:, None])
        croi_logits = None if self.croi_head is None else self.croi_head(last_hidden[rows, question_end])
        target_present, target_hidden = self._seg_states_teacher_forced(input_ids, last_hidden)
        seg_present, seg_hidden = target_present[:, 0], target_hidden[:, 0]
        target_masks = self._masks_for_targets(mask_embeds, pair_index, target_present, target_hidden, date_features)

        loss = ce = bce = dice = presence_loss = question_mask_loss = croi_loss = order_loss = None
        land_cover_term = None
        if labels is not None:
            ce = answer_loss(logits, labels[:, labels.shape[1] - logits.shape[1]:], self.config)
            bce, dice = mask_losses(target_masks, target_present, masks, reshaped_sizes, pair_index, self.config)
            cfg = self.config
            loss = cfg.ce_loss_weight * ce + cfg.bce_loss_weight * bce + cfg.dice_loss_weight * dice
            if presence_logits is not None:
                presence_loss = F.binary_cross_entropy_with_logits(presence_logits.float(), seg_present.float())
                loss = loss + cfg.presence_loss_weight * presence_loss
            if question_masks is not None and masks is not None:
                every_row = torch.ones(question_masks.shape[0], 1, dtype=torch.bool, device=question_masks.device)
                q_bce, q_dice = mask_losses(question_masks[:, None], every_row, question_truths(masks, seg_present),
                                            reshaped_sizes, pair_index, cfg)
                question_mask_loss = cfg.bce_loss_weight * q_bce + cfg.dice_loss_weight * q_dice
                loss = loss + cfg.question_mask_loss_weight * question_mask_loss
            known = None if croi_targets is None or croi_logits is None else croi_targets[:, 0] >= 0
            if known is not None and bool(known.any()):
                croi_loss = F.binary_cross_entropy_with_logits(croi_logits[known].float(), croi_targets[known].float())
                loss = loss + cfg.croi_loss_weight * croi_loss
            elif croi_logits is not None:  # nothing known to learn from: reached with weight zero, as the mask path
                loss = loss + 0.0 * croi_logits.sum()
            order_rows = None if order_known is None else order_known.to(seg_present.device)
            if order_rows is not None and self.order_head is not None:
                if order_symmetric is None:
                    order_symmetric = torch.zeros_like(order_rows)
                order_symmetric = order_symmetric.to(order_rows.device)
                order_rows = order_rows | order_symmetric
            if order_rows is not None:
                order_rows = order_rows & seg_present
            if cfg.learns_date_order and masks is not None and order_rows is not None and bool(order_rows.any()):
                if swapped is None and (cfg.order_loss_weight or cfg.order_presence_loss_weight):
                    swapped = self.swapped_mask_embeddings(features, sam_pixel_values_t1, sam_pixel_values_t2)
                order_loss = self._order_loss(
                    swapped, mask_embeds, date_features, order_rows.nonzero()[:, 0], seg_hidden,
                    None if question_end is None else last_hidden[rows, question_end], order_logits, order_masks,
                    order_symmetric, masks, reshaped_sizes, pair_index, question_masks, order_readings)
                loss = loss + order_loss
            elif self.training and order_logits is not None:  # no row to learn the order from: as the mask path
                loss = loss + 0.0 * order_logits.sum()
            if self.land_cover is not None and land_cover is not None:
                pair_sizes = reshaped_sizes.new_zeros(mask_embeds.shape[0], 2)
                pair_sizes[pair_index] = _per_row(reshaped_sizes, pair_index)
                land_cover_term = land_cover_loss(
                    self.land_cover_logits(features, sam_pixel_values_t1, sam_pixel_values_t2, mask_embeds,
                                           date_features, order_readings),
                    land_cover.to(mask_embeds.device), pair_sizes, cfg.sam_config.image_size,
                    changed_only=cfg.land_cover_reads == "dates")
                loss = loss + cfg.land_cover_loss_weight * land_cover_term
            if self.training and not bool(seg_present.any()):
                # No mask to learn from in this batch (only absent CRoIs): the mask path still runs once, weighted
                # zero, so that every process of a distributed run reduces gradients for the same parameters.
                first = pair_index[:1]
                loss = loss + 0.0 * self.decode_masks(mask_embeds[first], seg_hidden[:1],
                                                      date_features=per_prompt(date_features, first)).sum()
        return ReasonCDOutput(
            loss=loss, ce_loss=ce, bce_loss=bce, dice_loss=dice, logits=logits,
            pred_masks=target_masks[:, 0], seg_present=seg_present, seg_hidden_states=seg_hidden,
            presence_logits=presence_logits, presence_loss=presence_loss, question_masks=question_masks,
            question_mask_loss=question_mask_loss, croi_logits=croi_logits, croi_loss=croi_loss,
            order_logits=order_logits, order_loss=order_loss,
            land_cover_loss=land_cover_term,
            target_masks=target_masks,
            target_present=target_present, target_hidden_states=target_hidden,
        )

    def _seg_states_teacher_forced(self, input_ids, last_hidden):
        """For every `[SEG]` of each row, in order, the state at the position whose *next* token is that `[SEG]`
        (computed on the expanded sequence): present flags `(B, K)` and states `(B, K, hidden)`, zero where absent."""
        positions, target_present = seg_token_positions(input_ids[:, 1:] == self.config.seg_token_id)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None]
        target_hidden = last_hidden[rows, positions] * target_present.unsqueeze(-1).to(last_hidden.dtype)
        return target_present, target_hidden


__all__ = ["ReasonCDForChangeDetection", "ReasonCDPreTrainedModel", "ReasonCDOutput", "ReasonCDGenerateOutput"]
