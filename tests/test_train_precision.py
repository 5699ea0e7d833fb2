"""The training recipes a GPU run needs, on the CPU: DeepSpeed ZeRO-2 in bf16 through `accelerate launch` (the
README's command), and bf16 mixed precision with activation checkpointing under LoRA. Each trains a few steps, saves,
reloads through AutoModel and answers with a mask. ZeRO-3 across two processes: test_train_distributed.py."""
import json

import torch
from safetensors.torch import load_file

from helpers import REPO_ROOT
from training_helpers import answers_with_a_mask, run_training, train_args, training_data

STEPS = 2


def short_run(data, output_dir, *extra):
    args = train_args(data, output_dir, *extra)
    args[args.index("--max_steps") + 1] = args[args.index("--eval_steps") + 1] = str(STEPS)
    return args


def test_deepspeed_zero2_in_bf16_through_accelerate(tmp_path_factory, tmp_path):
    run = tmp_path / "ds-bf16"
    args = short_run(training_data(tmp_path_factory), run, "--bf16")
    launcher = ["-m", "accelerate.commands.launch", "--config_file", str(REPO_ROOT / "configs" / "accelerate_cpu_zero2.yaml")]
    run_training(launcher + args, timeout=600)
    checkpoint = run / "checkpoints" / f"checkpoint-{STEPS}"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == STEPS
    assert any(p.name.startswith("global_step") for p in checkpoint.iterdir())  # DeepSpeed's own state
    # DeepSpeed trained the module in bf16; the parts that must stay float32 were saved in float32.
    weights = load_file(str(run / "model" / "model.safetensors"))
    assert weights["sam_mask_decoder.transformer.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16
    assert weights["sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].dtype == torch.float32
    assert {t.dtype for name, t in weights.items() if name.endswith("running_var")} == {torch.float32}
    assert answers_with_a_mask(run / "model")["dtype"] == torch.bfloat16
    assert answers_with_a_mask(run / "model", dtype=torch.float32)["dtype"] == torch.float32


def test_bf16_autocast_with_activation_checkpointing_under_lora(tmp_path_factory, tmp_path, monkeypatch):
    import train
    from modeling_reasoncd import ReasonCDForChangeDetection

    seen = []
    original = ReasonCDForChangeDetection.forward

    def recording(self, *args, **kwargs):
        if self.training:
            seen.append((self.language_model.model.gradient_checkpointing,
                         torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ReasonCDForChangeDetection, "forward", recording)
    run = tmp_path / "bf16-checkpointing"
    assert train.main(short_run(training_data(tmp_path_factory), run, "--bf16", "--gradient_checkpointing")[1:]) == 0
    assert seen and all(checkpointing and autocast for checkpointing, autocast in seen), seen
    # LoRA learned through the checkpointed layers: its B matrices start at zero.
    adapter = load_file(str(run / "checkpoints" / f"checkpoint-{STEPS}" / "adapter_model.safetensors"))
    lora_b = [t for name, t in adapter.items() if ".lora_B." in name]
    assert lora_b and all(bool(t.abs().sum() > 0) for t in lora_b)
    assert answers_with_a_mask(run / "model")["dtype"] == torch.float32
