"""Where a stage's wall time goes: model compute (forward and backward) against everything else.

Each stage that runs a model records the seconds spent inside it in iter_<t>/timing/<stage>.json:
sampling the time inside the model's forward calls, training the time of the trainer's steps (forward,
backward and optimizer), evaluation the embedding model's forward calls. The runner's timing table puts them
beside each stage's wall time, so overhead (process and kernel starts, imports, model loads, tokenising,
grading, Parquet I/O) is visible (`bench/demo_profile.py` sums a whole run).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from . import artifacts

_DEFAULT_THREADS: int | None = None  # torch's own intra-op thread count, read before a stage first sets one


def set_torch_threads(n: int) -> None:
    """A stage's torch threads (`sample.threads`, `train.threads`): n, or with 0 torch's default, the count torch
    chose in this process before any stage set one. Stages of a run share a kernel (kernel.py), so without
    the reset one stage's count would stay for the next; the kernel's reset calls this with 0 after each."""
    global _DEFAULT_THREADS
    if not n and _DEFAULT_THREADS is None:
        return  # no stage has set a count: torch's own is in place (and torch need not be imported)
    import torch

    if _DEFAULT_THREADS is None:
        _DEFAULT_THREADS = torch.get_num_threads()
    torch.set_num_threads(n or _DEFAULT_THREADS)


def best_seconds(fn, sync=lambda: None, round_s: float = 0.1, rounds: int = 3) -> float:
    """Seconds one call of `fn` takes at best: a warm-up call, then as many calls a round as last `round_s`,
    the least mean of `rounds` rounds (`sync` waits for a device's queued work, e.g. torch.cuda.synchronize).
    The benchmarks' measure of a matrix product alone (bench/sampling.py's limit, bench/train_step.py's).

    >>> 0 < best_seconds(lambda: sum(range(100)), round_s=0.001) < 0.01
    True
    """
    fn()
    sync()
    reps = 1
    while True:  # enough repeats for round_s a round
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        if time.perf_counter() - t0 > round_s:
            break
        reps *= 2
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


class Clock:
    """Accumulated seconds and calls of a timed block."""

    def __init__(self):
        self.seconds, self.calls = 0.0, 0

    @contextlib.contextmanager
    def timing(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1


@contextlib.contextmanager
def timed_forward(module, clock: Clock):
    """Time every call of `module.forward` into `clock` while the block runs. A module on a CUDA GPU is
    synchronised before each call's clock stops: a forward call returns once its kernels are queued, so
    without it the clock would time the queueing and leave the compute to whatever waits next.

    >>> import torch
    >>> lin, clock = torch.nn.Linear(2, 2), Clock()
    >>> with timed_forward(lin, clock):
    ...     _ = lin(torch.zeros(1, 2)); _ = lin(torch.zeros(1, 2))
    >>> clock.calls
    2
    """
    original = module.forward
    param = next(module.parameters(), None)
    sync = _synchronizer(param.device if param is not None else None)

    def forward(*args, **kwargs):
        with clock.timing():
            out = original(*args, **kwargs)
            sync()
            return out

    module.forward = forward
    try:
        yield clock
    finally:
        module.forward = original


def _synchronizer(device):
    """A function that waits for the work queued on `device` when it is a CUDA device, else does nothing."""
    if device is None or getattr(device, "type", "cpu") != "cuda":
        return lambda: None
    import torch

    return lambda: torch.cuda.synchronize(device)


def trainer_callback(clock: Clock):
    """A transformers TrainerCallback that times each optimizer step (forward, backward, update); on a CUDA
    device the step's queued kernels are waited for before its clock stops (as in timed_forward)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self._sync = _synchronizer(args.device)

        def on_step_begin(self, args, state, control, **kwargs):
            self._sync()  # work queued before the step (the first step's set-up) is not the step's
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self._sync()
            clock.seconds += time.perf_counter() - self._t0
            clock.calls += 1

    return StepTimer()


def timing_path(run_dir: str | Path, t: int, stage: str) -> Path:
    return artifacts.RunPaths(run_dir).iter_dir(t) / "timing" / f"{stage}.json"


def record(run_dir: str | Path, t: int, stage: str, compute_s: float, what: str, **extra) -> Path:
    """Write a stage's compute seconds (and what they measure)."""
    path = timing_path(run_dir, t, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    return artifacts.write_json({"compute_s": round(compute_s, 3), "what": what, **extra}, path)


def read(run_dir: str | Path, t: int, stage: str) -> dict | None:
    import json

    path = timing_path(run_dir, t, stage)
    return json.loads(path.read_text()) if path.exists() else None


# ---------------------------------------------------------------------------------------------------------
# How close a GPU run comes to its hardware limit (the benchmarks' roofline columns). A decode step must read
# every weight once and the KV cache of every sequence in the batch, so memory bandwidth bounds decoding; a
# training step must do its matrix multiplications, so the tensor cores' peak bounds training. The peaks are
# the datasheets' (NVIDIA prints BF16 tensor FLOP/s "with sparsity", twice the dense figure used here).

GPU_PEAKS = [  # (a substring of torch.cuda.get_device_name(), HBM bytes/s, dense BF16 FLOP/s, source)
    ("H200", 4.8e12, 989e12, "NVIDIA H200 datasheet (SXM): 4.8 TB/s, 1,979 TFLOPS BF16 with sparsity"),
    ("H100 NVL", 3.9e12, 835e12, "NVIDIA H100 datasheet (NVL): 3.9 TB/s, 1,671 TFLOPS BF16 with sparsity"),
    ("H100 PCIe", 2.0e12, 756e12, "NVIDIA H100 datasheet (PCIe): 2 TB/s, 1,513 TFLOPS BF16 with sparsity"),
    ("H100", 3.35e12, 989e12, "NVIDIA H100 datasheet (SXM): 3.35 TB/s, 1,979 TFLOPS BF16 with sparsity"),
    ("A100-SXM4-80GB", 2.039e12, 312e12, "NVIDIA A100 datasheet (80GB SXM): 2,039 GB/s, 312 TFLOPS BF16"),
    ("A100 80GB PCIe", 1.935e12, 312e12, "NVIDIA A100 datasheet (80GB PCIe): 1,935 GB/s, 312 TFLOPS BF16"),
    ("A100", 1.555e12, 312e12, "NVIDIA A100 datasheet (40GB): 1,555 GB/s, 312 TFLOPS BF16"),
    ("L40S", 0.864e12, 362e12, "NVIDIA L40S datasheet: 864 GB/s, 733 TFLOPS BF16 with sparsity"),
]


def gpu_peaks(name: str) -> dict | None:
    """Peak bandwidth and dense BF16 FLOP/s of a GPU named as torch names it, or None when not in GPU_PEAKS.

    >>> gpu_peaks("NVIDIA H100 80GB HBM3")["bandwidth"], gpu_peaks("NVIDIA H100 PCIe")["bandwidth"]
    (3350000000000.0, 2000000000000.0)
    >>> gpu_peaks("NVIDIA GeForce GTX 1080") is None
    True
    """
    for key, bandwidth, flops, source in GPU_PEAKS:
        if key in name:
            return {"gpu": name, "bandwidth": bandwidth, "bf16_flops": flops, "source": source}
    return None


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    """Bytes of KV cache one token occupies: keys and values of every layer's KV heads (a transformers config).

    >>> from types import SimpleNamespace as C
    >>> kv_bytes_per_token(C(num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    ...                      hidden_size=4096), 2)  # Llama-3-8B in bf16: 128 KiB a token
    131072
    """
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes


def decode_bound(bandwidth: float, n_params: int, weight_bytes: int, kv_per_token: int, batch: int,
                 context: float) -> float:
    """Tokens/s that memory bandwidth allows when decoding `batch` sequences of `context` tokens on average:
    each step reads every weight once and each sequence's KV cache, and yields `batch` tokens (an upper bound:
    activations, sampling and the step's launch are left out).

    >>> round(decode_bound(3.35e12, 8_000_000_000, 2, 131072, 1, 1000))  # 8B bf16, one sequence: ~16 GB a step
    208
    """
    return batch * bandwidth / (n_params * weight_bytes + batch * context * kv_per_token)


def train_flops_per_token(n_params: int, kind: str, lora: bool) -> float:
    """Matrix-multiply FLOPs per trained token: forward 2N, backward 2N for the activations' gradients and,
    training every weight, 2N for the weights' (Kaplan et al. 2020: 6N); LoRA's adapters add well under 1%
    and are left out, as is attention's term in the context length. DPO's tokens (chosen and rejected,
    each with its prompt) also pass the frozen reference model forward: 2N more.

    >>> [train_flops_per_token(1, k, lora) for k, lora in (("sft", False), ("sft", True), ("dpo", True))]
    [6, 4, 6]
    """
    if kind not in ("sft", "dpo"):
        raise ValueError(f"kind must be sft or dpo, got {kind!r}")
    return (2 + 2 + (0 if lora else 2) + (2 if kind == "dpo" else 0)) * n_params


def train_bound(flops: float, n_params: int, kind: str, lora: bool) -> float:
    """Tokens/s that the tensor cores' peak allows for training (train_flops_per_token)."""
    return flops / train_flops_per_token(n_params, kind, lora)


def count_params(model_dir: str | Path) -> int:
    """Parameters of the causal LM in `model_dir` (built on the meta device: nothing is loaded; tied
    embeddings count once)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())
