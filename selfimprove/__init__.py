"""selfimprove: the iterative self-improvement loop of "Progress or Regress? Self-Improvement Reversal in
Post-training" (Wu, Li, Liu; ICLR 2025), and the evaluation that tells progress from reversal.

Stages (one module and one notebook each): train, sample, verify (+ pairs), evaluate (metrics); the run
is orchestrated by `pipeline` and configured by `config`. `arith` and `organism` are the built-in task and
model that make it all run on a CPU.
"""

__version__ = "0.1.0"
