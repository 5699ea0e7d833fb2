"""The paper's trainable set as a PEFT adapter: LoRA on the language model, its new token rows, and the
projector / text_hidden_fc / mask decoder / fusion module trained in full."""

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn


def lora_config_for(model, *, rank: int = 8, alpha: int = 16, dropout: float = 0.05,
                    targets: tuple[str, ...] = ("q_proj", "v_proj"), full_embeddings: bool = False,
                    train_vision_tower: bool = False) -> LoraConfig:
    """
    LoRA limited to the language model: a bare `q_proj` would also match CLIP and SAM's decoder attention.
    Token embeddings: only the five new rows of embed_tokens and lm_head are trained (small adapters), or, with
    `full_embeddings`, both whole matrices as LISA does (what a randomly initialised language model needs).
    `train_vision_tower` trains CLIP in full: a pretrained CLIP stays frozen (the paper), a random one sees nothing.
    """
    ids = model.config.new_token_ids
    modules = list(model.trainable_module_names)
    if full_embeddings:
        modules += ["embed_tokens", "lm_head"]
    if train_vision_tower:
        modules.append("vision_tower")
    modules = used_parts(model, modules)
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=rf".*language_model.*\.({'|'.join(targets)})",
        modules_to_save=modules,
        # LLaMA-2's embed_tokens and lm_head are untied: both need their new rows trained.
        trainable_token_indices=None if full_embeddings else {"embed_tokens": ids, "lm_head": ids},
    )


def apply_lora(model, **lora_kwargs) -> PeftModel:
    """
    Freezes everything, then makes exactly the trainable parts of docs/ARCHITECTURE.md ("What is trained") trainable.
    The LoRA dropouts draw their masks 16 bits at a time (`PackedDropout`).
    """
    peft_model = get_peft_model(model, lora_config_for(model, **lora_kwargs))
    for name, module in list(peft_model.named_modules()):
        if isinstance(module, nn.Dropout) and ".lora_dropout." in f"{name}." and 0 < module.p < 1:
            parent, _, child = name.rpartition(".")
            setattr(peft_model.get_submodule(parent), child, PackedDropout(module.p))
    return peft_model


class PackedDropout(nn.Module):
    """
    Dropout whose keep mask comes from 16-bit random levels, four cut from each 64-bit random integer.

    On the CPU `nn.Dropout` draws one random number per element, and on the tiny language model, whose every
    projection carries LoRA, those draws took about a sixth of a training step. This draws a quarter as many. An
    element is dropped with probability `round(p * 65536) / 65536` (0.05 -> 0.0500031) and the kept ones are scaled
    to keep the mean, as `nn.Dropout` does; the draws follow torch's seeded generator, so runs repeat.
    """

    LEVELS = 1 << 16

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 < p < 1:
            raise ValueError(f"dropout probability {p}: must be in (0, 1)")
        self.p = p
        self.dropped_levels = round(p * self.LEVELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        count = x.numel()
        words = torch.randint(-(1 << 63), (1 << 63) - 1, ((count + 3) // 4,), dtype=torch.int64, device=x.device)
        levels = words.view(torch.int16)[:count].view(x.shape)  # uniform over [-32768, 32767]
        keep = levels >= self.dropped_levels - self.LEVELS // 2
        return x * (keep.to(x.dtype) * (self.LEVELS / (self.LEVELS - self.dropped_levels)))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def used_parts(model, names: list[str]) -> list[str]:
    """
    The modules to train in full for `names`: each name, or, where part of it is never reached by a loss
    (`model.unused_module_names`), its children that are (recursively). Every trainable parameter then receives a
    gradient, and PEFT saves exactly the trained copies (under ZeRO-3 a frozen part inside a trained copy is missing
    from the gathered state dict).
    """
    unused = set(model.unused_module_names)
    parts = []
    for name in names:
        if name in unused:
            continue
        if not any(u.startswith(f"{name}.") for u in unused):
            parts.append(name)
            continue
        module = model.get_submodule(name)
        if any(True for _ in module.parameters(recurse=False)):
            raise ValueError(f"{name} holds parameters of its own beside an unused part: train it whole or not at all")
        parts += used_parts(model, [f"{name}.{child}" for child, _ in module.named_children()])
    return parts


def trainable_parameter_groups(peft_model: PeftModel) -> dict[str, int]:
    """Trainable parameter count per top-level component of the wrapped model."""
    groups: dict[str, int] = {}
    for name, parameter in peft_model.named_parameters():
        if parameter.requires_grad:
            component = name.removeprefix("base_model.model.").split(".")[0]
            groups[component] = groups.get(component, 0) + parameter.numel()
    return groups


def module_path(peft_parameter_name: str) -> str:
    """A PEFT-wrapped parameter's name as the plain model spells it (no wrapper prefix, no trained-copy infix)."""
    name = peft_parameter_name.removeprefix("base_model.model.")
    return name.replace(".modules_to_save.default.", ".").replace(".original_module.", ".")
