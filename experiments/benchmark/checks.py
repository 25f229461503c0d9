"""The meta-gradient cross-check: tensor by tensor, float32 and float64."""

from typing import Any

import numpy as np

# A tensor whose gradient norm is below this fraction of the whole
# meta-gradient's is zero in exact arithmetic (e.g. a bias before batch norm):
# its relative error would be rounding noise over rounding noise.
ZERO_GRAD_FRACTION = 1e-4
# Largest relative error between a PyTorch implementation's float64
# meta-gradient and jaxmeta's: the same function agrees to ~1e-13 in float64
# even where float32 leaves 1e-3; a larger gap is a different function.
FLOAT64_TOL = 1e-8


def flatten_params(params, dtype=np.float32) -> dict[str, np.ndarray]:
  """`{'conv0': {'w': a}}` -> `{'conv0/w': np.asarray(a, dtype)}`."""
  return {
    f'{m}/{leaf}': np.array(v, dtype)
    for m, d in params.items()
    for leaf, v in d.items()
  }


def cross_check(
  reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], tol: float
) -> dict[str, Any]:
  """Compares two meta-gradients tensor by tensor.

  The error of tensor `t` is `||c_t - r_t|| / ||r_t||`, or `/ ||r||` where
  `||r_t|| < ZERO_GRAD_FRACTION * ||r||`.

  Args:
    reference: jaxmeta's meta-gradient, `{name: array}`.
    candidate: the other implementation's, same names and shapes.
    tol: largest allowed error per tensor.

  Returns:
    `{'passed', 'max_rel_err', 'worst_tensor', 'tensors': {name: {'rel_err',
    'ref_norm', 'scale'}}, 'problems': [...]}`; `scale` is 'tensor' or
    'global' (the near-zero rule).
  """
  problems = []
  if set(reference) != set(candidate):
    problems.append(
      f'parameter names differ: {sorted(set(reference))} vs '
      f'{sorted(set(candidate))}'
    )
  global_norm = float(
    np.sqrt(
      sum(np.sum(np.square(v, dtype=np.float64)) for v in reference.values())
    )
  )
  tensors = {}
  for name in sorted(set(reference) & set(candidate)):
    ref = np.asarray(reference[name], np.float64)
    cand = np.asarray(candidate[name], np.float64)
    if ref.shape != cand.shape:
      problems.append(f'{name}: shape {cand.shape} != {ref.shape}')
      tensors[name] = dict(rel_err=float('inf'), ref_norm=None, scale='tensor')
      continue
    ref_norm = float(np.linalg.norm(ref))
    near_zero = ref_norm < ZERO_GRAD_FRACTION * global_norm
    denom = global_norm if near_zero else ref_norm
    diff = float(np.linalg.norm(cand - ref))
    if not np.isfinite(cand).all() or (denom == 0 and diff > 0):
      err = float('inf')
    else:
      err = diff / denom if denom > 0 else 0.0
    tensors[name] = {
      'rel_err': err,
      'ref_norm': ref_norm,
      'scale': 'global' if near_zero else 'tensor',
    }
  errs = {n: t['rel_err'] for n, t in tensors.items()}
  worst = max(errs, key=errs.get) if errs else None
  max_err = errs[worst] if worst else float('inf')
  passed = not problems and bool(errs) and max_err <= tol
  return {
    'passed': passed,
    'max_rel_err': max_err,
    'worst_tensor': worst,
    'tol': tol,
    'tensors': tensors,
    'problems': problems,
  }


def verdict(
  entry: dict[str, Any], tol: float, reference_vs_float64: float | None
) -> tuple[bool, str]:
  """Whether an implementation's meta-gradient passes the cross-check.

  Passes if it computes the same function (its float64 meta-gradient agrees
  with jaxmeta's to `FLOAT64_TOL`, where the float64 check ran) and its
  float32 meta-gradient either agrees with the reference's to `tol`, or lies
  within the reference's own float32 error (its distance from float64) of
  the reference or of float64: at full size no two float32 implementations
  agree to 1e-4, as a max-pool or ReLU tie routes the gradient differently
  in each (benchmarks/README.md).

  Args:
    entry: `cross_check(reference, candidate, tol)` of the float32
      meta-gradients, with `vs_float64_max_rel_err` and `float64_agreement`
      where the float64 check ran.
    tol: the float32 tolerance.
    reference_vs_float64: the reference's own float32 error against float64.

  Returns:
    `(passed, how)`: how is 'float32' or 'float64' (the rule that passed it),
    or why it failed: 'error', 'float64 mismatch', 'float32 mismatch'.
  """
  if entry.get('problems'):
    return False, 'error'
  agreement = entry.get('float64_agreement')
  if agreement is not None and not agreement <= FLOAT64_TOL:
    return False, 'float64 mismatch'
  if entry.get('max_rel_err') is not None and entry['max_rel_err'] <= tol:
    return True, 'float32'
  vs_float64 = entry.get('vs_float64_max_rel_err')
  if (
    agreement is not None
    and vs_float64 is not None
    and reference_vs_float64 is not None
    and min(entry['max_rel_err'], vs_float64) <= max(tol, reference_vs_float64)
  ):
    return True, 'float64'
  return False, 'float32 mismatch'


def float64_errors(
  truth: dict[str, np.ndarray] | None, got: dict[str, np.ndarray]
) -> dict[str, Any]:
  """A float32 meta-gradient's error against the float64 one (if computed)."""
  if truth is None:
    return {}
  result = cross_check(truth, got, float('inf'))
  return {
    'vs_float64_max_rel_err': result['max_rel_err'],
    'vs_float64_worst_tensor': result['worst_tensor'],
  }
