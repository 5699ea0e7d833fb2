"""The Trainer of train.py: frozen-feature cache, per-term loss logging, the fidelity score as the validation metric,
checkpoints written so that a kill cannot corrupt them (`reasoncd.training.checkpoints`), and Ctrl-C handling."""

import os
import signal
import sys
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints

from reasoncd.evaluation.scoring import (batch_counterfactual, batches_by_pair, encode_batch, question_use_figures,
                                         score, seg_decided_teacher_forced, swappable_rows, teacher_forced_masks)
from reasoncd.training.arguments import training_arguments
from reasoncd.training.checkpoints import (STAGING, clear_staging, last_complete_checkpoint, publish, retire,
                                          write_manifest)
from reasoncd.training.dataset import ReasonCDCollator, as_dataset
from reasoncd.training.feature_cache import FrozenFeatureCache
from reasoncd.write_faults import WriteFault, folder_bytes, translated


class SaveOnInterrupt(TrainerCallback):
    """First Ctrl-C / SIGTERM: finish the current step, save a checkpoint, stop. A second Ctrl-C aborts."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._request)

    def _request(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to abort)", file=sys.stderr)

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control


class ReasonCDTrainer(Trainer):
    """Trainer with the frozen-feature cache, per-term loss logging, the fidelity score as the validation metric and
    checkpoints that appear whole or not at all."""

    def __init__(self, *args, feature_cache=None, cache_vision=True, val_samples=None, reasoncd_processor=None,
                 eval_batch_size=8, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.full_determinism:
            # Deterministic mode also fills every new tensor with NaN (a debugging aid, not needed for the same
            # bits): about a tenth of a CPU training step.
            torch.utils.deterministic.fill_uninitialized_memory = False
        self.feature_cache = feature_cache
        self.cache_vision = cache_vision  # False while CLIP trains: its cached features would be stale
        self.val_samples = val_samples or []
        self.reasoncd_processor = reasoncd_processor
        self.eval_batch_size = eval_batch_size
        self._terms = defaultdict(float)
        self._term_count = 0
        self._staging = False  # while True, the Trainer's checkpoint writer is pointed at the staging folder

    # --- checkpoints: staged, completed with a manifest, renamed into place (reasoncd/training/checkpoints.py) ---
    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING) if self._staging else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        """Saves as the Trainer does, staged and published whole; a full disk (or any refused write) clears what
        was staged, frees its space, and says which earlier checkpoint a run can continue from."""
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        earlier = last_complete_checkpoint(run_dir)[0]
        kept = ("The earlier checkpoints are intact: " + (f"continue from {earlier.name} with --resume_from_checkpoint"
                                                          if earlier else "there were none yet"))
        try:
            with translated(run_dir / name, kept=kept, within=(run_dir,),
                            measure=lambda: folder_bytes(run_dir / STAGING)):
                self._save_staged_checkpoint(model, trial, run_dir, name)
        except WriteFault:
            if self.args.process_index == 0:
                clear_staging(run_dir)
            raise

    def _save_staged_checkpoint(self, model, trial, run_dir: Path, name: str) -> None:
        if self.args.process_index == 0:
            clear_staging(run_dir)  # a save or deletion that a kill interrupted
        self.accelerator.wait_for_everyone()
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)  # every process writes its part (DeepSpeed shards, RNG states)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()
        # The Trainer looked for the best checkpoint among the staged ones: point it at the final names.
        if self.state.best_global_step:
            best = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}"
            if best.name == name or best.is_dir():
                self.state.best_model_checkpoint = str(best)
        if self.args.process_index == 0:
            staged = run_dir / STAGING / name
            if self.args.should_save:
                self.state.save_to_json(str(staged / "trainer_state.json"))
            write_manifest(staged, self.state.global_step)
            publish(staged, run_dir / name)
            self._rotate_checkpoints(run_dir)
            clear_staging(run_dir)
        self.accelerator.wait_for_everyone()

    def _rotate_checkpoints(self, run_dir: Path) -> None:
        """Keep `save_total_limit` checkpoints, always the newest and the best; delete the others whole."""
        limit = self.args.save_total_limit
        checkpoints = sort_checkpoints(str(run_dir), use_mtime=True)
        if not limit or len(checkpoints) <= limit:
            return
        protected = {checkpoints[-1]}
        if self.state.best_model_checkpoint:
            protected.add(str(Path(self.state.best_model_checkpoint)))
        excess = len(checkpoints) - max(limit, len(protected))
        for checkpoint in [c for c in checkpoints if c not in protected][:max(excess, 0)]:
            retire(checkpoint)

    def _base_model(self, model):
        model = self.accelerator.unwrap_model(model)
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def _inputs_with_features(self, model, inputs: dict) -> dict:
        keys = inputs.pop("cache_keys", None)
        if self.feature_cache is not None and keys:
            features = self.feature_cache.frozen_features(self._base_model(model), inputs, keys)
            if not self.cache_vision:
                features.vision_features_t1 = features.vision_features_t2 = None
            inputs["frozen_features"] = features
        return inputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = self._inputs_with_features(model, inputs)
        # Training reads the logits of the answers alone; evaluation scores them all (teacher-forced figures).
        outputs = model(**inputs, answer_logits_only=model.training)
        if model.training:
            for term in ("ce_loss", "bce_loss", "dice_loss", "presence_loss", "question_mask_loss",
                         "croi_loss", "order_loss", "land_cover_loss"):
                if outputs.get(term) is not None:  # the last five: only with their options
                    self._terms[term] += float(outputs[term].detach())
            self._term_count += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict, start_time=None) -> None:
        if "loss" in logs and self._term_count:
            logs.update({term: round(total / self._term_count, 4) for term, total in self._terms.items()})
            self._terms.clear()
            self._term_count = 0
        super().log(logs, start_time)

    @torch.no_grad()
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """
        Teacher-forced validation (fast; the early-stopping signal): loss, mask F1/precision/recall/IoU, and the
        question-use figures of `reasoncd.evaluation.scoring.score`: steering, `[SEG]` emission and absent-CRoI
        accuracy (argmax proxies under teacher forcing), question sensitivity, the counterfactual F1 drop, and the
        fidelity score that picks the best checkpoint (mean of F1, steering, absent accuracy, 1 - sensitivity).
        """
        model = self.model_wrapped if self.is_deepspeed_enabled else self.model
        base = self._base_model(model)
        was_training = model.training
        model.eval()
        losses, predictions = [], [None] * len(self.val_samples)
        collate = self.data_collator.evaluation()  # never augmented
        for indices in batches_by_pair(self.val_samples, self.eval_batch_size):  # a pair's questions together
            batch = [self.val_samples[i] for i in indices]
            inputs = self._inputs_with_features(model, self._prepare_inputs(collate(batch)))
            outputs = model(**inputs)
            losses.append(float(outputs.loss))
            masks, targets = teacher_forced_masks(self.reasoncd_processor, inputs, outputs,
                                                  [sample["answer"] for sample in batch])
            emits_seg = seg_decided_teacher_forced(base, outputs, inputs["labels"])
            # The counterfactual reuses the cached encodings; without the cache the encoders run once more.
            features = inputs.get("frozen_features")
            if features is None:
                features = encode_batch(base, inputs)
            truths = inputs["masks"] > 0.5
            truths = (truths.any(dim=1) if truths.dim() == 4 else truths).cpu().numpy()  # a question's union
            swaps = batch_counterfactual(base, self.reasoncd_processor, inputs, features,
                                         swappable_rows(outputs.seg_present, batch), outputs.seg_hidden_states,
                                         truths, indices)
            for row, i in enumerate(indices):
                predictions[i] = {"text": batch[row]["answer"], "mask": masks[row], "targets": targets[row],
                                  "seg": bool(emits_seg[row]), "swapped_mask": swaps[row][0],
                                  "swap_source": swaps[row][1]}
        result = score(self.val_samples, predictions, by_phrasing=False)  # none of it is logged; it doubles the time
        logged = {f"{metric_key_prefix}_loss": sum(losses) / max(len(losses), 1)}
        logged.update({f"{metric_key_prefix}_{k}": float(result[k]) for k in ("f1", "precision", "recall", "iou")})
        logged.update({f"{metric_key_prefix}_{name}": float(value)
                       for name, value in question_use_figures(result).items() if value is not None})
        self.log(logged)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, logged)
        if was_training:
            model.train()
        return logged




def whole_parameters(model):
    """
    Under DeepSpeed ZeRO-3 each process holds a shard of every parameter: this context gathers them whole on every
    process (a collective: all processes must enter it) so that one process can merge LoRA and save the model; what
    process 0 changes is kept when the shards are taken again. Elsewhere it does nothing.
    """
    if not is_deepspeed_zero3_enabled():
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0)


def load_unsharded(path):
    """A saved model loaded whole into this process, outside ZeRO-3's sharded construction (which a run with a
    ZeRO-3 config turns on for every `from_pretrained` of the process)."""
    from transformers.integrations import deepspeed as hf_deepspeed

    from modeling_reasoncd import ReasonCDForChangeDetection

    reference = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        return ReasonCDForChangeDetection.from_pretrained(path).eval()
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = reference


def make_trainer(args, model, peft_model, processor, train_samples: list[dict], val_samples: list[dict],
                 interrupt: SaveOnInterrupt) -> ReasonCDTrainer:
    """train.py's Trainer over `peft_model` (LoRA applied to `model`), with the frozen-feature cache --feature_cache
    asks for and early stopping by --early_stopping_patience."""
    cache = None
    if args.feature_cache != "off":
        directory = args.output_dir / "feature_cache" if args.feature_cache == "disk" else None
        cache = FrozenFeatureCache(model, directory)
    return ReasonCDTrainer(
        model=peft_model,
        args=training_arguments(args),
        train_dataset=as_dataset(train_samples),
        eval_dataset=as_dataset(val_samples),  # scored by ReasonCDTrainer.evaluate
        data_collator=ReasonCDCollator(processor, cache_keys=cache is not None,
                                       croi_units=model.config.croi_units, augmentation=args.augment,
                                       order_truths=model.config.learns_date_order,
                                       land_cover_classes=model.config.land_cover_classes),
        processing_class=processor.tokenizer,
        callbacks=[interrupt] + ([EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience)]
                                 if args.early_stopping_patience else []),
        feature_cache=cache,
        cache_vision=not args.train_vision_tower,
        val_samples=val_samples,
        reasoncd_processor=processor,
        eval_batch_size=args.eval_batch_size,
    )
