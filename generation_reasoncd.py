"""ReasonCD's answer generation: greedy decoding with the KV cache, then one mask per `[SEG]` of each answer.

A mixin of `ReasonCDForChangeDetection` (modeling_reasoncd.py), kept apart so the model file reads as the paper's
architecture. Several questions about one pair share its encoding and the prompt prefix up to the question; each
answer leaves the batch as soon as it ends.
"""

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from numbers import Integral

import torch
from transformers import Cache, DynamicCache, LogitsProcessor, LogitsProcessorList, StaticCache
from transformers.utils import ModelOutput


@dataclass
class ReasonCDGenerateOutput(ModelOutput):
    """
    Output of [`ReasonCDForChangeDetection.generate`]; `ReasonCDProcessor.post_process_generation` turns it into
    answer texts and full-size masks.

    Args:
        sequences (`torch.LongTensor` of shape `(B, T)`): the generated token ids (prompt excluded), padded with
            `pad_token_id` after `</s>`.
        pred_masks (`torch.FloatTensor` of shape `(B, h_low, w_low)`): low-resolution change logits in SAM's padded
            frame of each answer's first `[SEG]`; zeros where `seg_present` is False.
        seg_present (`torch.BoolTensor` of shape `(B,)`): whether the answer holds a `[SEG]` token.
        seg_hidden_states (`torch.FloatTensor` of shape `(B, hidden_size)`): the state that predicted the first
            `[SEG]`.
        seg_probabilities (`torch.FloatTensor` of shape `(B,)`): where `seg_present`, the lowest probability the
            language model gave `[SEG]` at a step that emitted one (for one `[SEG]`, that step's); elsewhere the
            highest probability `[SEG]` had at any step of the answer (up to and including the one that emitted
            `</s>`): how close the model came to pointing at a mask. Read off the model's own next-token
            distribution (softmax of its logits, before logits processors or `min_new_tokens`), so a forced answer
            still reports what the model believed.
        target_masks (`torch.FloatTensor` of shape `(B, K, h_low, w_low)`): the logits of every `[SEG]` of each
            answer before `</s>`, in order (K: the most any answer holds, at least 1); zeros where not present.
        target_present (`torch.BoolTensor` of shape `(B, K)`): whether answer b holds a (k+1)-th `[SEG]`.
        target_hidden_states (`torch.FloatTensor` of shape `(B, K, hidden_size)`): the state that predicted each.
        target_seg_probabilities (`torch.FloatTensor` of shape `(B, K)`): the probability of each emitted `[SEG]`.
        reshaped_sizes (`torch.LongTensor` of shape `(B, 2)`): each input's size after SAM's longest-side resize.
        image_sizes (`torch.LongTensor` of shape `(B, 2)`): each input's original `(height, width)`.
        presence_probabilities (`torch.FloatTensor` of shape `(B,)`, *optional*): with `presence_head`, the head's
            probability that the asked change is there, read from its logit less `presence_threshold` (with
            `order_head`, the lower of that and the order head's); the answer followed its decision (above 0.5:
            present).
    """

    sequences: torch.LongTensor | None = None
    pred_masks: torch.FloatTensor | None = None
    seg_present: torch.BoolTensor | None = None
    seg_hidden_states: torch.FloatTensor | None = None
    seg_probabilities: torch.FloatTensor | None = None
    reshaped_sizes: torch.LongTensor | None = None
    image_sizes: torch.LongTensor | None = None
    presence_probabilities: torch.FloatTensor | None = None
    target_masks: torch.FloatTensor | None = None
    target_present: torch.BoolTensor | None = None
    target_hidden_states: torch.FloatTensor | None = None
    target_seg_probabilities: torch.FloatTensor | None = None


def seg_token_positions(is_seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Where each row's `[SEG]` tokens are (`is_seg` `(B, T)` bool), in order: positions `(B, K)` (0 where the row has
    fewer) and present flags `(B, K)`, K the most any row holds (at least 1, so a batch without `[SEG]` keeps one
    column). Teacher forcing and generation both find their states with it.
    """
    width = max(int(is_seg.sum(dim=1).max()) if is_seg.numel() else 0, 1)
    rank = is_seg.long().cumsum(dim=1)  # the k-th [SEG] of a row has rank k
    ranks = torch.arange(1, width + 1, device=is_seg.device)
    hits = is_seg[:, None, :] & (rank[:, None, :] == ranks[None, :, None])  # (B, K, T)
    return hits.float().argmax(dim=2), hits.any(dim=2)


def _per_row(per_pair_or_row: torch.Tensor | None, pair_index: torch.Tensor) -> torch.Tensor | None:
    """Sizes given per pair (P rows) become per question (B rows); per-question sizes pass through."""
    if per_pair_or_row is None or per_pair_or_row.shape[0] == pair_index.shape[0]:
        return per_pair_or_row
    return per_pair_or_row[pair_index]


def per_prompt(date_features: torch.Tensor | None, pairs: torch.Tensor) -> torch.Tensor | None:
    """`fusion_film`'s per-date features `(2, P, C, h, w)` of each prompt's pair (`pairs` `(N,)`): `(2, N, C, h, w)`;
    None stays None (no `fusion_film`)."""
    return None if date_features is None else date_features[:, pairs]


def question_end_positions(input_ids: torch.Tensor, p_end_token_id: int) -> torch.Tensor:
    """Per row, the position of the last `</p>` (the end of the question); every row must hold one."""
    is_end = input_ids == p_end_token_id
    if not bool(is_end.any(dim=1).all()):
        raise ValueError(f"presence_head needs the question closed by </p> (token id {p_end_token_id}) in every "
                         "prompt; build inputs with ReasonCDProcessor and its default chat template")
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)
    return torch.where(is_end, columns, -1).amax(dim=1)


def seg_token_probability(logits: torch.Tensor, seg_token_id: int) -> torch.Tensor:
    """`softmax(logits)[..., seg_token_id]` in float32, without materialising the whole distribution."""
    logits = logits.float()
    return (logits[..., seg_token_id] - torch.logsumexp(logits, dim=-1)).exp()


def _select_cache_rows(cache: Cache, rows: torch.Tensor) -> None:
    """Keeps `rows` (in that order) of every layer of a dynamic or static KV cache."""
    for layer in cache.layers:
        if layer.is_initialized:
            layer.keys, layer.values = layer.keys.index_select(0, rows), layer.values.index_select(0, rows)
            layer.batch_size = len(rows)


def pair_rows(pair_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first row about each pair (pairs in ascending order), and for every row its pair's place among them:
    what a computation done once per pair needs to serve each row."""
    pairs, pair_slots = torch.unique(pair_index, return_inverse=True)
    rows = torch.arange(pair_index.shape[0], device=pair_index.device)
    first_rows = torch.full_like(pairs, pair_index.shape[0]).scatter_reduce(0, pair_slots, rows, reduce="amin")
    return first_rows, pair_slots


class ReasonCDGenerationMixin:
    """`generate` and its helpers; expects the attributes and methods of `ReasonCDForChangeDetection`."""

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values_t1: torch.FloatTensor | None = None,
        pixel_values_t2: torch.FloatTensor | None = None,
        sam_pixel_values_t1: torch.FloatTensor | None = None,
        sam_pixel_values_t2: torch.FloatTensor | None = None,
        pair_index: torch.LongTensor | None = None,
        reshaped_sizes: torch.LongTensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        max_new_tokens: int = 64,
        frozen_features: ModelOutput | None = None,  # ReasonCDFrozenFeatures
        use_cache: bool = True,
        share_prefix: bool = True,
        **generate_kwargs,
    ) -> ReasonCDGenerateOutput:
        """
        Greedy decoding with the KV cache, then one mask per `[SEG]` of each answer from the state that predicted it.

        The images of each pair are encoded once, however many questions (rows) refer to it via `pair_index`.
        With `share_prefix`, the prompt up to the question (task sentence and both images' tokens, most of the
        sequence) is prefilled once per pair and its KV cache reused by every question about that pair; the
        question suffixes then decode together, and each row leaves the batch as soon as it ends, so short answers
        stop costing compute while an explanation goes on. This loop honours `logits_processor` and
        `min_new_tokens`; other `generate` options (sampling, beams, ...) are handed to the language model's own
        `generate`. `use_cache=False` recomputes the whole sequence at every step.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, Integral) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        attention_mask, pair_index, features = self._prepare_inputs(
            input_ids, attention_mask, pair_index, frozen_features,
            pixel_values_t1=pixel_values_t1, pixel_values_t2=pixel_values_t2,
            sam_pixel_values_t1=sam_pixel_values_t1, sam_pixel_values_t2=sam_pixel_values_t2,
        )
        # The fusion module is question-independent: with change tokens or the presence head the language model's
        # input depends on it, so it runs first.
        mask_embeds = date_features = None
        if self.change_projector is not None or self.presence is not None:
            mask_embeds, date_features = self.mask_embeddings(features, sam_pixel_values_t1, sam_pixel_values_t2)
        prefix_length = use_cache and share_prefix and self._shared_prefix_length(input_ids, attention_mask)
        if prefix_length:
            input_ids, attention_mask = self._shared_prefix_layout(input_ids, attention_mask, prefix_length)
        presence = None
        if self.presence is not None:
            readings = (None if self.order_head is None
                        else self.order_readings(features, sam_pixel_values_t1, sam_pixel_values_t2, mask_embeds))
            presence = _PresenceDecision(self, input_ids, mask_embeds, pair_index, date_features, readings)
        own_loop = use_cache and set(generate_kwargs) <= {"logits_processor", "min_new_tokens"}
        # Our loop writes into a preallocated cache (no copy of every row's keys and values per step); the language
        # model's `generate` gets the dynamic cache it expects.
        cache = None
        if own_loop:
            cache = StaticCache(config=self.language_model.config, max_cache_len=input_ids.shape[1] + max_new_tokens)
        elif prefix_length:
            cache = DynamicCache(config=self.language_model.config)
        if prefix_length:
            inputs_embeds = self._prefill_prefix(input_ids, features, pair_index, prefix_length, cache, mask_embeds)
        else:
            inputs_embeds = self._merge_image_tokens(input_ids, features, pair_index, mask_embeds)
        if own_loop:
            sequences, step_states, step_seg_probabilities = self._greedy_decode(
                inputs_embeds, attention_mask, cache, max_new_tokens, presence=presence, **generate_kwargs)
        else:
            following = nullcontext()
            if presence is not None:  # decided in a pass of its own, then added to every token after </p>
                inputs_embeds = presence.decide_uncached(inputs_embeds, attention_mask)
                following = presence.following(self.get_input_embeddings())
                generate_kwargs["logits_processor"] = LogitsProcessorList(
                    [presence.rules()] + list(generate_kwargs.get("logits_processor") or []))
            with following:
                generated = self.language_model.generate(
                    inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache,
                    max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=use_cache,
                    output_hidden_states=True, output_logits=True, return_dict_in_generate=True,
                    pad_token_id=self.config.pad_token_id, eos_token_id=self.config.eos_token_id, **generate_kwargs,
                )
            sequences = generated.sequences
            # hidden_states[j][-1][:, -1] is the last-layer state that predicted generated token j.
            step_states = torch.stack([states[-1][:, -1] for states in generated.hidden_states], dim=1)
            # logits[j] are the unprocessed scores of step j.
            step_seg_probabilities = seg_token_probability(torch.stack(generated.logits, dim=1),
                                                           self.config.seg_token_id)
        target_present, target_hidden, target_probabilities, seg_probabilities = self._seg_states_generated(
            sequences, step_states, step_seg_probabilities)
        if bool(target_present.any()):
            if mask_embeds is None:
                mask_embeds, date_features = self.mask_embeddings(features, sam_pixel_values_t1, sam_pixel_values_t2)
            target_masks = self._masks_for_targets(mask_embeds, pair_index, target_present, target_hidden,
                                                   date_features)
        else:  # every answer says the change is absent: no need to run the fusion module and decoder
            side = self.config.sam_config.low_res_mask_size
            target_masks = target_hidden.new_zeros(*target_present.shape, side, side)
        return ReasonCDGenerateOutput(
            sequences=sequences, pred_masks=target_masks[:, 0], seg_present=target_present[:, 0],
            seg_hidden_states=target_hidden[:, 0], seg_probabilities=seg_probabilities,
            reshaped_sizes=_per_row(reshaped_sizes, pair_index), image_sizes=_per_row(image_sizes, pair_index),
            presence_probabilities=None if presence is None else presence.probabilities,
            target_masks=target_masks, target_present=target_present, target_hidden_states=target_hidden,
            target_seg_probabilities=target_probabilities,
        )

    def _shared_prefix_length(self, input_ids, attention_mask) -> int:
        """Length of the prompt up to and including `<p>` when it is the same in every row (else 0)."""
        starts = input_ids == self.config.p_start_token_id
        if not bool(starts.any(dim=1).all()):
            return 0
        first = starts.float().argmax(dim=1)
        lengths = first + 1 - (attention_mask == 0).sum(dim=1)  # left padding comes before the prompt
        if bool((lengths != lengths[0]).any()) or int(lengths[0]) >= int(attention_mask.sum(dim=1).min()):
            return 0
        return int(lengths[0])

    def _shared_prefix_layout(self, input_ids, attention_mask, prefix_length):
        """
        Left-padded rows re-laid as prefix | padding | suffix, so every row's prefix lines up with the shared cache;
        positions (cumulative sum of the mask) stay those of the unpadded prompt.
        """
        rows = input_ids.shape[0]
        real = [input_ids[row][attention_mask[row].bool()] for row in range(rows)]
        width = max(len(ids) for ids in real) - prefix_length
        layout = torch.full((rows, prefix_length + width), self.config.pad_token_id, dtype=input_ids.dtype,
                            device=input_ids.device)
        mask = torch.zeros_like(layout)
        for row, ids in enumerate(real):
            suffix = len(ids) - prefix_length
            layout[row, :prefix_length] = ids[:prefix_length]
            layout[row, layout.shape[1] - suffix:] = ids[prefix_length:]
            mask[row, :prefix_length] = 1
            mask[row, layout.shape[1] - suffix:] = 1
        return layout, mask

    def _prefill_prefix(self, input_ids, features, pair_index, prefix_length, cache, mask_embeds=None):
        """
        Fills `cache` with the common prefix's keys and values, computed once per pair and copied to each of the
        pair's rows; returns every row's input embeddings (the prefix's, with the image features, also made once
        per pair).
        """
        prefix_rows, row_slots = pair_rows(pair_index)
        prefix_embeds = self._merge_image_tokens(input_ids[prefix_rows, :prefix_length], features,
                                                 pair_index[prefix_rows], mask_embeds)
        self.language_model(inputs_embeds=prefix_embeds, cache=cache, use_cache=True, logits_to_keep=1)
        _select_cache_rows(cache, row_slots)
        suffix_embeds = self.get_input_embeddings()(input_ids[:, prefix_length:])
        return torch.cat([prefix_embeds[row_slots], suffix_embeds.to(prefix_embeds.dtype)], dim=1)

    def _greedy_decode(self, inputs_embeds, attention_mask, cache, max_new_tokens, logits_processor=None,
                       min_new_tokens: int = 0, presence=None):
        """
        Greedy decoding with the KV cache, continuing from what `cache` holds (the prefilled prefix, or nothing).

        A row leaves the batch, its cache rows dropped, as soon as it emits `</s>`. Logits processors still see the
        whole batch (rows that ended get zero scores, and `pad_token_id` as their tokens), as in `generate`.
        Returns the generated ids `(B, T)`, `pad_token_id` after `</s>`, the last-layer state that predicted
        each of them `(B, T, hidden_size)`, and the probability of `[SEG]` at each step `(B, T)` from the logits
        before any processor (0 once a row has ended). That probability is read off the logits this step computes
        anyway: no extra forward pass. With `presence` (a `_PresenceDecision`), the prompt up to `</p>` runs first,
        the head decides, and its decision is added to every later token; a row decided absent cannot emit
        `[SEG]`, one decided present cannot end before it.
        """
        language_model, cfg = self.language_model, self.config
        rows, device = inputs_embeds.shape[0], inputs_embeds.device
        positions = self._position_ids(attention_mask)
        done = int(cache.get_seq_length())
        decided = None
        if presence is not None:
            done, decided = presence.decide_cached(inputs_embeds, attention_mask, positions, cache, done)
            inputs_embeds = inputs_embeds.clone()
            inputs_embeds[:, done:] += decided[:, None].to(inputs_embeds.dtype)
        step_inputs = dict(inputs_embeds=inputs_embeds[:, done:], position_ids=positions[:, done:])
        next_position = positions[:, -1:] + 1
        active = torch.arange(rows, device=device)
        pointed = torch.zeros(rows, dtype=torch.bool, device=device)  # rows that have emitted [SEG]
        tokens, states, seg_probabilities = [], [], []
        for step in range(max_new_tokens):
            output = language_model(**step_inputs, attention_mask=attention_mask, cache=cache, use_cache=True,
                                    output_hidden_states=True, logits_to_keep=1)
            hidden = output.hidden_states[-1][:, -1]
            scores = output.logits[:, -1].float()
            seg_probability = seg_token_probability(scores, cfg.seg_token_id)
            if step < min_new_tokens:
                scores[:, cfg.eos_token_id] = float("-inf")
            if presence is not None:
                present = presence.present[active]
                scores[:, cfg.seg_token_id] = scores[:, cfg.seg_token_id].masked_fill(~present, float("-inf"))
                scores[:, cfg.eos_token_id] = scores[:, cfg.eos_token_id].masked_fill(
                    present & ~pointed[active], float("-inf"))
            if logits_processor is not None:
                everyone = scores.new_zeros(rows, scores.shape[-1]).index_copy(0, active, scores)
                so_far = torch.stack(tokens, dim=1) if tokens else active.new_zeros(rows, 0)
                scores = logits_processor(so_far, everyone)[active]
            chosen = scores.argmax(dim=-1)
            pointed[active] |= chosen == cfg.seg_token_id
            tokens.append(chosen.new_full((rows,), cfg.pad_token_id).index_copy(0, active, chosen))
            states.append(hidden.new_zeros(rows, hidden.shape[-1]).index_copy(0, active, hidden))
            seg_probabilities.append(seg_probability.new_zeros(rows).index_copy(0, active, seg_probability))
            going = chosen != cfg.eos_token_id
            if step + 1 == max_new_tokens or not bool(going.any()):
                break
            if not bool(going.all()):
                keep = going.nonzero().squeeze(1)
                _select_cache_rows(cache, keep)
                active, chosen = active[keep], chosen[keep]
                attention_mask, next_position = attention_mask[keep], next_position[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], dim=1)
            embeds = self.get_input_embeddings()(chosen.unsqueeze(1))
            if decided is not None:
                embeds = embeds + decided[active, None].to(embeds.dtype)
            step_inputs = dict(inputs_embeds=embeds, position_ids=next_position)
            next_position = next_position + 1
        return torch.stack(tokens, dim=1), torch.stack(states, dim=1), torch.stack(seg_probabilities, dim=1)

    def _seg_states_generated(self, sequences, step_states, step_seg_probabilities):
        """
        Every `[SEG]` before `</s>` in each generated row, in order: present flags `(B, K)`, the states that
        predicted them `(B, K, hidden)` and `[SEG]`'s probability at each `(B, K)`; and per row `(B,)` the lowest of
        those, or, for a row without `[SEG]`, `[SEG]`'s highest probability over its steps up to its `</s>`.
        """
        ends = (sequences == self.config.eos_token_id).long().cumsum(dim=1)
        steps, target_present = seg_token_positions((sequences == self.config.seg_token_id) & (ends == 0))
        rows = torch.arange(sequences.shape[0], device=sequences.device)[:, None]
        target_hidden = step_states[rows, steps] * target_present.unsqueeze(-1).to(step_states.dtype)
        target_probabilities = step_seg_probabilities[rows, steps].masked_fill(~target_present, 0.0)
        # Steps up to and including the first `</s>` (the steps after it only pad a finished row).
        answered = (ends - (sequences == self.config.eos_token_id).long()) == 0
        highest = step_seg_probabilities.masked_fill(~answered, 0.0).amax(dim=1)
        lowest_emitted = target_probabilities.masked_fill(~target_present, float("inf")).amin(dim=1)
        seg_probabilities = torch.where(target_present[:, 0], lowest_emitted, highest)
        return target_present, target_hidden, target_probabilities, seg_probabilities


class _PresenceDecision:
    """
    The presence head's decision in generation (`ReasonCDConfig.presence_head`). Every row's prompt ends with the
    same tokens after `</p>` (the template's closing request; rows are aligned at their ends), so the prompt up to
    `</p>` runs first, the head reads its last state, and the decision vector (with `croi_plan`, plus the CRoI
    head's units: `question_read`) is added to every later token. With `order_head`, a question is present where
    the order head agrees (`order_readings`: what it compares per pair, as given and swapped).
    """

    def __init__(self, model, input_ids, mask_embeds, pair_index, date_features=None, order_readings=None):
        from_end = input_ids.shape[1] - question_end_positions(input_ids, model.config.p_end_token_id)
        if bool((from_end != from_end[0]).any()):
            raise ValueError("presence_head: every prompt must end with the same tokens after </p> (the processor's "
                             f"chat template); found {sorted(set(from_end.tolist()))} tokens after it")
        self.model, self.change_embeddings = model, mask_embeds[pair_index]
        self.date_features = per_prompt(date_features, pair_index)
        self.order_readings = None if order_readings is None else [r[pair_index] for r in order_readings]
        self.tail = int(from_end[0]) - 1  # tokens after </p>
        self.present = self.probabilities = self.vectors = None


    def _decide(self, states):
        logits, question_masks = self.model.question_presence(states, self.change_embeddings, self.date_features)
        logits = self.model.presence_margin(logits.float())
        if self.model.order_head is not None:  # present only where the order head agrees the change holds
            order = self.model.order_head(states, *self.order_readings,
                                          question_masks=self.model.order_head_within(question_masks))
            logits = torch.minimum(logits, order.float())
        self.probabilities = logits.sigmoid()
        self.present = logits > 0
        units = None if self.model.croi_plan is None else self.model.croi_head(states) > 0
        self.vectors = self.model.question_read(self.present, units)
        return self.vectors

    def decide_cached(self, inputs_embeds, attention_mask, positions, cache, done):
        """Runs the prompt from `done` up to `</p>` into `cache`; returns where the rest starts and the decision
        vectors `(B, hidden)`."""
        end = inputs_embeds.shape[1] - self.tail
        output = self.model.language_model(
            inputs_embeds=inputs_embeds[:, done:end], position_ids=positions[:, done:end],
            attention_mask=attention_mask[:, :end], cache=cache, use_cache=True, output_hidden_states=True,
            logits_to_keep=1)
        return end, self._decide(output.hidden_states[-1][:, -1])

    def decide_uncached(self, inputs_embeds, attention_mask):
        """For the language model's own `generate`: the prompt up to `</p>` once more, without a cache; returns the
        embeddings with the decision added to the prompt's tokens after `</p>` (`following` adds it to the
        generated ones, `rules` keeps the answer to it)."""
        end = inputs_embeds.shape[1] - self.tail
        mask = attention_mask[:, :end]
        output = self.model.language_model(inputs_embeds=inputs_embeds[:, :end], attention_mask=mask,
                                           position_ids=self.model._position_ids(mask), output_hidden_states=True,
                                           logits_to_keep=1)
        decided = self._decide(output.hidden_states[-1][:, -1])
        inputs_embeds = inputs_embeds.clone()
        inputs_embeds[:, end:] += decided[:, None].to(inputs_embeds.dtype)
        return inputs_embeds

    @contextmanager
    def following(self, embeddings):
        """While open, every token the language model embeds itself (the generated ones) gets the decision vector
        of its row (rows repeated for beams or several sequences per prompt)."""
        decided = self.vectors

        def add_decision(module, args, output):
            return output + decided.repeat_interleave(output.shape[0] // decided.shape[0], dim=0)[:, None].to(
                output.dtype)

        handle = embeddings.register_forward_hook(add_decision)
        try:
            yield
        finally:
            handle.remove()

    def rules(self) -> LogitsProcessor:
        return _PresenceRules(self.present, self.model.config.seg_token_id, self.model.config.eos_token_id)


class _PresenceRules(LogitsProcessor):
    """For the language model's own `generate`: a row decided absent cannot emit `[SEG]`, one decided present cannot
    end before it (rows repeated for beams or several sequences per prompt)."""

    def __init__(self, present: torch.Tensor, seg_token_id: int, eos_token_id: int) -> None:
        self.present, self.seg, self.eos = present, seg_token_id, eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        present = self.present.repeat_interleave(scores.shape[0] // self.present.shape[0])
        pointed = (input_ids == self.seg).any(dim=1)
        scores = scores.clone()
        scores[:, self.seg] = scores[:, self.seg].masked_fill(~present, float("-inf"))
        scores[:, self.eos] = scores[:, self.eos].masked_fill(present & ~pointed, float("-inf"))
        return scores
