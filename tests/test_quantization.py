"""Quantised loading with bitsandbytes on the `tiny` preset, on the CPU: only the language model's decoder layers
become 8-bit / 4-bit layers, everything else keeps its exact weights, the footprint shrinks by what those layers
save, logits stay close to full precision, `generate` still gives masks; and clear errors without bitsandbytes."""
import sys

import pytest
import torch
from PIL import Image
from torch import nn
from transformers import AutoModel, AutoProcessor, LogitsProcessorList
from transformers.dynamic_module_utils import get_imports

import app
import eval as eval_script
import predict
from helpers import REPO_ROOT, ForceAnswers, random_image, tiny_checkpoint
from modeling_reasoncd import ReasonCDForChangeDetection
from reasoncd.loading import use_generic_cpu_4bit_kernel

try:
    import bitsandbytes as bnb
    BNB_MISSING = None
except Exception as error:  # not installed, or installed without a usable native library
    bnb, BNB_MISSING = None, f"bitsandbytes is not importable ({error}); install it with pip install -e .[quant]"

needs_bnb = pytest.mark.skipif(BNB_MISSING is not None, reason=BNB_MISSING or "")

BITS = [8, 4]
QUESTIONS = ["new buildings", "changes that provide more living areas for people, and explain why"]
ANSWERS = ["It's [SEG].", "Houses were built on the former fields, so the change is [SEG]."]
HEIGHT, WIDTH = 96, 128
# Relative L2 error of the teacher-forced logits against full precision (answer and prompt positions). Measured
# on 4 seeds x 2 image pairs: 8-bit 0.0145-0.0176, 4-bit 0.167-0.201. It is about twice the quantisers' own
# relative weight error on this model (LLM.int8 0.007, NF4 0.092); the bounds leave 3x / 1.75x room, and stay far
# below the ~1.4 of unrelated logits.
LOGITS_TOLERANCE = {8: 0.05, 4: 0.35}
DECODER_LAYERS = "language_model.model.layers."


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def processor(checkpoint):
    return AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)


@pytest.fixture(scope="module")
def full(checkpoint):
    return AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()


@pytest.fixture(scope="module", params=BITS, ids=[f"{bits}-bit" for bits in BITS])
def quantized(request, checkpoint):
    """(bits, model) loaded the documented way: AutoModel with `bitsandbytes_config`."""
    if BNB_MISSING:
        pytest.skip(BNB_MISSING)
    bits = request.param
    config = ReasonCDForChangeDetection.bitsandbytes_config(bits, compute_dtype=torch.float32)
    # device_map pins it to the CPU beside `full` (bitsandbytes would pick a GPU where there is one).
    model, info = AutoModel.from_pretrained(checkpoint, trust_remote_code=True, quantization_config=config,
                                            device_map={"": "cpu"}, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    if bits == 4:  # bitsandbytes' AVX512-BF16 CPU kernel cannot take the tiny preset's 688-wide MLP
        use_generic_cpu_4bit_kernel(model)
    return bits, model.eval()


@pytest.fixture(scope="module")
def pair():
    t1 = random_image(HEIGHT, WIDTH, seed=1)
    t2 = t1.copy()
    t2[20:60, 30:90] = [230, 220, 210]
    return t1, t2


def quantized_class(bits):
    return {8: bnb.nn.Linear8bitLt, 4: bnb.nn.Linear4bit}[bits]


# --- what gets quantised ----------------------------------------------------------------------------------------
@needs_bnb
def test_config_skips_every_part_but_the_decoder_layers(full):
    top_level = {name for name, _ in full.named_children()} - {"language_model"}
    assert top_level <= set(ReasonCDForChangeDetection.unquantized_module_names)
    assert "language_model.lm_head" in ReasonCDForChangeDetection.unquantized_module_names
    config = ReasonCDForChangeDetection.bitsandbytes_config(4)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert ReasonCDForChangeDetection.bitsandbytes_config(8).load_in_8bit
    for bad in (3, 16, True, "4"):
        with pytest.raises(ValueError, match=f"bits={bad!r}"):
            ReasonCDForChangeDetection.bitsandbytes_config(bad)


def test_only_the_decoder_layers_are_quantized(quantized, full):
    bits, model = quantized
    layer_class = quantized_class(bits)
    quantized_names = {name for name, module in model.named_modules() if isinstance(module, layer_class)}
    layers = full.config.text_config.num_hidden_layers
    assert len(quantized_names) == 7 * layers  # q, k, v, o, gate, up, down
    assert all(name.startswith(DECODER_LAYERS) for name in quantized_names)
    assert not any(type(module).__module__.startswith("bitsandbytes") for name, module in model.named_modules()
                   if not name.startswith(DECODER_LAYERS))

    # Everything outside the decoder layers is the plain layer it was, with the checkpoint's exact weights.
    full_modules = dict(full.named_modules())
    for part in ReasonCDForChangeDetection.unquantized_module_names:
        if part in ReasonCDForChangeDetection.optional_module_names and getattr(full, part) is None:
            continue  # an option this checkpoint was built without
        if part == "seg_state_norm":
            continue  # running statistics only: no layer to quantise
        plain = [(name, module) for name, module in model.named_modules()
                 if name.startswith(part) and isinstance(module, (nn.Linear, nn.Conv2d))]
        assert plain, f"{part} holds no Linear/Conv2d layer"
        for name, module in plain:
            assert type(module) is type(full_modules[name]) and type(module) in (nn.Linear, nn.Conv2d), name
            assert module.weight.dtype == torch.float32, name
            assert torch.equal(module.weight, full_modules[name].weight), name
    full_state = full.state_dict()
    for name, tensor in model.state_dict().items():
        if not name.startswith(DECODER_LAYERS):
            assert torch.equal(tensor, full_state[name]), name


def test_footprint_shrinks_by_what_the_decoder_layers_save(quantized, full):
    bits, model = quantized
    weights = sum(module.weight.numel() for name, module in full.named_modules()
                  if name.startswith(DECODER_LAYERS) and isinstance(module, nn.Linear))
    bytes_per_weight = bits / 8  # from 4 (float32); bitsandbytes' scales are not counted as parameters
    saved = full.get_memory_footprint() - model.get_memory_footprint()
    assert saved == pytest.approx((4 - bytes_per_weight) * weights, rel=0.02)


# --- what it computes -------------------------------------------------------------------------------------------
def test_teacher_forced_logits_stay_close_to_full_precision(quantized, full, processor, pair):
    bits, model = quantized
    t1, t2 = pair
    batch = processor(images_t1=t1, images_t2=t2, text=QUESTIONS, answers=ANSWERS)
    with torch.no_grad():
        reference, output = full(**batch), model(**batch)
    real = batch["attention_mask"].bool()
    error = float((output.logits[real] - reference.logits[real]).norm() / reference.logits[real].norm())
    assert 0 < error < LOGITS_TOLERANCE[bits]
    assert output.seg_present.all() and torch.isfinite(output.pred_masks).all()


def test_generate_gives_masks_of_the_input_size(quantized, processor, pair):
    bits, model = quantized
    t1, t2 = pair
    inputs = processor(images_t1=t1, images_t2=t2, text=QUESTIONS)
    rows = [row[row != -100].tolist() for row in processor(images_t1=t1, images_t2=t2, text=QUESTIONS,
                                                            answers=ANSWERS)["labels"]]
    out = model.generate(**inputs, max_new_tokens=max(map(len, rows)) + 1,
                         logits_processor=LogitsProcessorList([ForceAnswers(rows, model.config.eos_token_id)]))
    side = model.config.sam_config.low_res_mask_size
    assert out.seg_present.all()
    assert out.pred_masks.shape == (len(QUESTIONS), side, side) and torch.isfinite(out.pred_masks).all()
    assert out.pred_masks.abs().amax(dim=(1, 2)).min() > 0
    results = processor.post_process_generation(out)
    assert [r["raw_text"] for r in results] == ANSWERS
    assert all(r["mask"].shape == (HEIGHT, WIDTH) for r in results)


@needs_bnb
def test_bf16_around_a_4bit_language_model(checkpoint, full, processor, pair):
    """What `load_model` does on a GPU: the unquantised parts in bf16, NF4 computing in bf16."""
    model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True, dtype=torch.bfloat16,
                                      quantization_config=ReasonCDForChangeDetection.bitsandbytes_config(4),
                                      device_map={"": "cpu"}).eval()
    use_generic_cpu_4bit_kernel(model)
    assert model.vision_tower.dtype == model.sam_image_encoder.patch_embed.proj.weight.dtype == torch.bfloat16
    assert model.language_model.lm_head.weight.dtype == torch.bfloat16
    # segment-anything multiplies a float32 grid by it (`_keep_in_fp32_modules_strict`)
    assert model.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.dtype == torch.float32
    t1, t2 = pair
    batch = processor(images_t1=t1, images_t2=t2, text=QUESTIONS, answers=ANSWERS)
    with torch.no_grad():
        reference, output = full(**batch), model(**batch)
    real = batch["attention_mask"].bool()
    error = float((output.logits[real].float() - reference.logits[real]).norm() / reference.logits[real].norm())
    assert error < LOGITS_TOLERANCE[4]
    assert output.seg_present.all() and torch.isfinite(output.pred_masks).all() and output.pred_masks.abs().max() > 0


# --- the scripts ------------------------------------------------------------------------------------------------
@needs_bnb
def test_predict_load_model_quantizes_and_answers(checkpoint, pair):
    model, processor = predict.load_model(checkpoint, quantize=4, device="cpu")
    assert model.device.type == "cpu" and getattr(model, "is_loaded_in_4bit", False)
    assert isinstance(model.language_model.model.layers[0].mlp.down_proj, bnb.nn.Linear4bit)
    assert type(model.language_model.lm_head) is nn.Linear
    result = predict.predict(model, processor, *pair, ["new buildings"], max_new_tokens=3)[0]
    assert result["mask"].shape == (HEIGHT, WIDTH) and isinstance(result["text"], str)


def test_modeling_imports_nothing_of_bitsandbytes():
    # The Hub loader refuses remote code importing a package that is not installed, even inside a function.
    assert "bitsandbytes" not in get_imports(REPO_ROOT / "modeling_reasoncd.py")


def test_scripts_say_how_to_install_bitsandbytes(checkpoint, pair, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # find_spec now reports it missing
    with pytest.raises(ImportError, match=r"pip install -e \.\[quant\]"):
        ReasonCDForChangeDetection.bitsandbytes_config(4)
    t1, t2 = tmp_path / "t1.png", tmp_path / "t2.png"
    Image.fromarray(pair[0]).save(t1)
    Image.fromarray(pair[1]).save(t2)
    assert predict.main(["--model", str(checkpoint), "--t1", str(t1), "--t2", str(t2), "--question", "roads",
                         "--out", str(tmp_path / "mask.png"), "--quantize", "8"]) == 2
    assert eval_script.main(["--model", str(checkpoint), "--data", str(tmp_path), "--quantize", "4",
                             "--output_dir", str(tmp_path / "eval")]) == 2
    assert app.main(["--model", str(checkpoint), "--quantize", "4"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 3 and all("needs bitsandbytes: pip install -e .[quant]" in line for line in errors), errors
    assert not (tmp_path / "mask.png").exists() and not (tmp_path / "eval").exists()


def test_bad_quantize_values_are_refused(checkpoint, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        predict.main(["--model", "m", "--t1", "a", "--t2", "b", "--question", "q", "--out", "o", "--quantize", "3"])
    assert "--quantize: invalid choice: 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_script.main(["--pred_dir", "p", "--label_dir", "l", "--quantize", "4", "--output_dir", "o"])
    assert "--quantize applies to model mode" in capsys.readouterr().err
    monkeypatch.setenv("REASONCD_QUANTIZE", "16")  # an environment default skips argparse's choices
    assert app.main(["--model", str(checkpoint)]) == 2
    assert "--quantize 16: choose 8 or 4" in capsys.readouterr().err
