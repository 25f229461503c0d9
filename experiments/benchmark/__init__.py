r"""Meta-step speed of jaxmeta against PyTorch implementations, correctness first.

For each configuration (model, task shapes, meta-batch) and algorithm (MAML,
first-order MAML, Reptile) it builds ONE set of initial weights (jaxmeta's
`conv4` init) and ONE meta-batch of random images and labels (fixed seed;
speed does not depend on pixel values), then:

1. Cross-check: the mean meta-gradient of every implementation on those
   weights and that batch, in float32 with full-precision matmuls (no TF32,
   JAX precision 'highest'), against the reference, jaxmeta with the FIRST of
   `--conv_impls` and the timed step's task chunking; with `--float64_check`
   (default) each is computed again in float64 against jaxmeta's float64
   result (pass rule: `checks.verdict`). An implementation that fails gets no
   speed figure, and the run exits non-zero after writing its outputs.
2. Timing: the whole meta-step (meta-gradient + Adam update) of each
   implementation that passed: jaxmeta's jitted `make_meta_train_step` (state
   donated), PyTorch's `zero_grad`, meta-gradient and `Adam.step`. Compiled
   and run once each, the implementations of one configuration and algorithm
   are then timed in turns of `--interleave_block` steps, so that a change of
   load does not bias their ratios. Median and min over the timed steps.
3. Roofline: each timed row's FLOPs per step (XLA's count of jaxmeta's step;
   a torch row has that of the same algorithm), achieved GFLOP/s and its
   fraction of the best float32 matmul peak, timed at the start of the run
   (`--matmul_peak_size`; 0: none).

Implementations: `jaxmeta` (one row per `--conv_impls` entry), `torch_loop`
(per-task loop), `torch_func` (`torch.func`, `vmap` over tasks) and
`torch_higher` (the `higher` library); see `torch_baselines.py`. PyTorch
(`requirements-benchmark.txt`) is optional: `--implementations=jaxmeta`
times jaxmeta's alone.

  python -m experiments.benchmark --out=/tmp/bench                 # full size
  python -m experiments.benchmark --size=tiny --out=/tmp/bench      # CI size
  python -m experiments.benchmark --configs=omniglot_5w1s_mb4 \
      --conv_impls=xla,patches --out=benchmarks/cpu

Outputs in `--out`: `benchmark.json` (settings, cross-checks, one row per
configuration x algorithm x implementation; strict JSON: a non-finite number
is written as null), `benchmark.md` (a table) and `benchmark.png` (ms per
meta-step, log scale).

Modules: `configs` (presets and settings), `checks` (the cross-check),
`jax_step` and `torch_step` (each side's checked and timed step, with
`torch_baselines`), `timing`, `roofline` (the matmul peak, each row's
GFLOP/s), `report` (outputs), `run` (the whole run), `cli` (flags and
`main`), `xla_costs` (what XLA says a program costs: the rows' FLOPs, and
`benchmarks/scaling/`).
"""
