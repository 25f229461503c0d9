"""The experiment programs of jaxmeta: configs, the training harness, studies.

A folder of the repository, run from a checkout as `python -m
experiments.main`; installed, it is the package `jaxmeta_experiments` (a
name no user's own `experiments` folder shadows), with the commands
`jaxmeta-train`, `jaxmeta-omniglot` and `jaxmeta-sinusoid`. Its modules
import each other relatively, so both names work.
"""
