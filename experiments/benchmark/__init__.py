r"""Meta-step speed of jaxmeta against PyTorch implementations, correctness first.

For each configuration (model, task shapes, meta-batch) and algorithm (MAML,
first-order MAML, Reptile) it builds ONE set of initial weights (jaxmeta's
`conv4` init, fixed seed) and ONE meta-batch of random images and labels
(`jax.random`, fixed seed; random data, not Omniglot: speed does not depend on
pixel values), then:

1. Cross-check: computes the mean meta-gradient with `jaxmeta.meta_gradient`
   (with the timed step's task chunking: the checked program is the timed
   one) and with every PyTorch implementation on those weights and that batch, in
   float32 with full-precision matmuls (no TF32, JAX matmul precision
   'highest'), and compares them tensor by tensor. The reference is jaxmeta
   with the FIRST of `--conv_impls` (list 'xla' first to make XLA's direct
   convolution the reference); every other jaxmeta conv implementation and
   every PyTorch implementation is checked against it, and (`--float64_check`,
   default) computed again in float64 against jaxmeta's float64 result; see
   `checks.verdict` for the pass rule. An implementation that fails gets no speed
   figure and the run exits non-zero after writing its outputs.
2. Timing: the whole meta-step (meta-gradient + Adam update) of each
   implementation that passed: jaxmeta's jitted `make_meta_train_step` (state
   donated), and the PyTorch step (`zero_grad`, meta-gradient, `Adam.step`).
   The implementations of one configuration and algorithm are compiled and
   run once each, then timed in turns of `--interleave_block` steps, so that
   a change of load on a shared machine does not bias their ratios. Median and
   min over the timed steps, synchronised with `jax.block_until_ready` /
   `torch.cuda.synchronize`.

Implementations: `jaxmeta` (one row per `--conv_impls` entry), `torch_loop`
(per-task loop, learn2learn/higher style), `torch_func` (`torch.func` with
`vmap` over tasks), `torch_higher` (the `higher` library). See
`torch_baselines.py`.

  python -m experiments.benchmark --out=/tmp/bench                 # full size
  python -m experiments.benchmark --size=tiny --out=/tmp/bench      # CI size
  python -m experiments.benchmark --configs=omniglot_5w1s_mb4 \
      --conv_impls=xla,patches --out=benchmarks/cpu

Outputs in `--out`: `benchmark.json` (settings, cross-checks, one row per
configuration x algorithm x implementation; strict JSON: a non-finite number,
e.g. the relative error of a NaN gradient, is written as null),
`benchmark.md` (a table) and `benchmark.png` (ms per meta-step, log scale).

Algorithms: MAML, first-order MAML and Reptile (`configs.ALGORITHMS`),
which `torch_baselines.py` implements too. PyTorch
(`requirements-benchmark.txt`) is optional: without it,
`--implementations=jaxmeta` times jaxmeta's alone.

Modules: `configs` (presets and settings), `checks` (the cross-check),
`jax_step` and `torch_step` (each side's checked and timed step, with
`torch_baselines`), `timing`, `report` (outputs), `run` (the whole run),
`cli` (flags and `main`), `xla_costs` (what XLA says a program costs, for
`benchmarks/scaling/`).
"""
