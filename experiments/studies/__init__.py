"""Studies: comparisons run on the library, each writing to `benchmarks/`.

`compare` (every method for the same training time, recipes in
`compare_recipes`), `batch_norm_modes` (the batch-norm modes, each query
scored with the others and alone), `sampler_benchmark` (task sampling
against a meta-step). Run as `python -m experiments.studies.<name>`.
"""
