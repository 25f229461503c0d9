"""Config files: one ml_collections `get_config(arg)` per published setting.

Select one with `--config=experiments/configs/<file>.py[:preset]` and
override any field with `--config.<field>=<value>`.
"""
