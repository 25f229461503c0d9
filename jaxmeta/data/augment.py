"""Data augmentation for few-shot image batches, in pure `jax.random`.

Random crop after padding, horizontal flip and colour jitter, as Chen et al.
2019, Snell et al. 2017 and Lee et al. 2019 use them, with the conventions of
torchvision's `RandomCrop`, `RandomHorizontalFlip` and `ColorJitter`. Each
function works on ONE float32 image `[H, W, C]` in [0, 1], is deterministic
given its key and runs under `jit` and `vmap`; `augment` applies a configured
set to a batch `[n, H, W, C]`, one key per image.

* crop: pad `padding` pixels on every side (zeros, or `np.pad`'s 'reflect'),
  take an HxW window at a uniform offset in [0, 2 * padding] per axis; usual:
  4 for 32x32 (CIFAR), 8 for 84x84 (mini-ImageNet).
* flip: mirror left-right with probability 1/2.
* jitter: factors uniform in [max(0, 1 - s), 1 + s] per strength s;
  brightness scales the image, contrast blends it with the mean of its
  grayscale, saturation with its grayscale (ITU-R 601 luma), clipping to
  [0, 1] after each, always in this order (torchvision's is random).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxmeta.types import Array, PRNGKey

_LUMA = (0.299, 0.587, 0.114)


class AugmentConfig(NamedTuple):
  """Which augmentations `augment` applies (hashable: static under jit).

  Attributes:
    crop_padding: pixels padded on each side before a random crop; 0: no crop.
    crop_mode: 'constant' (zeros) or 'reflect'.
    flip: random horizontal flips.
    brightness, contrast, saturation: jitter strengths (0: none), e.g. 0.4.
  """

  crop_padding: int = 0
  crop_mode: str = 'constant'
  flip: bool = False
  brightness: float = 0.0
  contrast: float = 0.0
  saturation: float = 0.0


def check_config(config: AugmentConfig) -> None:
  """Raises a ValueError naming the first field that cannot be applied."""
  if (
    isinstance(config.crop_padding, bool)
    or not isinstance(config.crop_padding, int)
    or config.crop_padding < 0
  ):
    raise ValueError(
      f'crop_padding must be an int >= 0, got {config.crop_padding!r}.'
    )
  if config.crop_mode not in ('constant', 'reflect'):
    raise ValueError(
      f"crop_mode must be 'constant' or 'reflect', got {config.crop_mode!r}."
    )
  for name in ('brightness', 'contrast', 'saturation'):
    value = getattr(config, name)
    if not 0.0 <= value < float('inf'):
      raise ValueError(f'{name} must be a finite number >= 0, got {value!r}.')


def standard_config(image_size: int) -> AugmentConfig:
  """Crop (padding 4 for images up to 32 pixels, else 8), flip, jitter 0.4."""
  return AugmentConfig(
    crop_padding=4 if image_size <= 32 else 8,
    flip=True,
    brightness=0.4,
    contrast=0.4,
    saturation=0.4,
  )


def random_crop(
  key: PRNGKey, image: Array, padding: int, mode: str = 'constant'
) -> Array:
  """A random HxW window of `image` `[H, W, C]` padded by `padding` (static)
  on every side, with zeros (`mode='constant'`) or 'reflect'."""
  if mode not in ('constant', 'reflect'):
    raise ValueError(
      f"Unknown crop padding mode {mode!r}. Fix: use 'constant' or 'reflect'."
    )
  if padding < 0 or (mode == 'reflect' and padding >= min(image.shape[:2])):
    raise ValueError(
      f'padding={padding} for a {image.shape[0]}x{image.shape[1]} image: need '
      '0 <= padding (and < the side for reflect). Fix: use e.g. 4 or 8.'
    )
  if padding == 0:
    return image
  padded = jnp.pad(
    image, ((padding, padding), (padding, padding), (0, 0)), mode=mode
  )
  offsets = jax.random.randint(key, (2,), 0, 2 * padding + 1)
  return jax.lax.dynamic_slice(padded, (offsets[0], offsets[1], 0), image.shape)


def random_flip(key: PRNGKey, image: Array) -> Array:
  """`image[:, ::-1]` with probability 1/2, else `image`. `[H, W, C]`."""
  return jnp.where(jax.random.bernoulli(key), image[:, ::-1], image)


def _grayscale(image: Array) -> Array:
  """`[H, W, 1]` luma of `[H, W, C]` (the image itself if C == 1)."""
  if image.shape[-1] == 1:
    return image
  return image @ jnp.asarray(_LUMA, image.dtype)[:, None]


def _factor(key: PRNGKey, strength: float) -> Array:
  return jax.random.uniform(
    key, (), minval=max(0.0, 1.0 - strength), maxval=1.0 + strength
  )


def color_jitter(
  key: PRNGKey,
  image: Array,
  brightness: float = 0.0,
  contrast: float = 0.0,
  saturation: float = 0.0,
) -> Array:
  """Random brightness, contrast and saturation, in that order, of a float
  image `[H, W, C]` in [0, 1]; strengths are static (0: none)."""
  keys = jax.random.split(key, 3)
  if brightness:
    image = jnp.clip(image * _factor(keys[0], brightness), 0.0, 1.0)
  if contrast:
    mean = jnp.mean(_grayscale(image))
    f = _factor(keys[1], contrast)
    image = jnp.clip(f * image + (1.0 - f) * mean, 0.0, 1.0)
  if saturation and image.shape[-1] > 1:
    f = _factor(keys[2], saturation)
    image = jnp.clip(f * image + (1.0 - f) * _grayscale(image), 0.0, 1.0)
  return image


def augment_image(key: PRNGKey, image: Array, config: AugmentConfig) -> Array:
  """Applies `config` to one float32 image `[H, W, C]`: crop, flip, jitter."""
  crop_key, flip_key, jitter_key = jax.random.split(key, 3)
  if config.crop_padding:
    image = random_crop(crop_key, image, config.crop_padding, config.crop_mode)
  if config.flip:
    image = random_flip(flip_key, image)
  return color_jitter(
    jitter_key, image, config.brightness, config.contrast, config.saturation
  )


def augment(key: PRNGKey, images: Array, config: AugmentConfig) -> Array:
  """Augments a batch, one independent draw per image.

  Args:
    key: PRNG key.
    images: float32 `[n, H, W, C]` in [0, 1], e.g. a task's `support_x`.
    config: `AugmentConfig` (static under jit).

  Returns:
    float32 `[n, H, W, C]`.

  Example::

    config = standard_config(84)
    step = jax.jit(augment, static_argnames='config')
    support_x = step(key, task.support_x, config=config)
  """
  if images.ndim != 4:
    raise ValueError(
      f'images must be [n, H, W, C], got shape {images.shape}. Fix: vmap '
      '`augment` over extra leading axes (e.g. tasks), or use '
      '`augment_image` for one image.'
    )
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(lambda k, x: augment_image(k, x, config))(keys, images)
