"""Tests of the augmentations against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmeta.data import augment as aug


def _image(seed=0, shape=(6, 5, 3)):
  return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_flip_is_exact_and_takes_both_branches():
  image = _image()
  flip = jax.jit(aug.random_flip)  # One compilation for the loop.
  outcomes = set()
  for i in range(16):
    got = np.asarray(flip(jax.random.key(i), image))
    if np.array_equal(got, image[:, ::-1]):
      outcomes.add('flipped')
    else:
      np.testing.assert_array_equal(got, image)
      outcomes.add('same')
  assert outcomes == {'flipped', 'same'}


@pytest.mark.parametrize(
  'mode, np_mode', [('constant', 'constant'), ('reflect', 'reflect')]
)
def test_crop_is_a_window_of_the_padded_image(mode, np_mode):
  image = _image()
  padding = 2
  padded = np.pad(
    image, ((padding, padding), (padding, padding), (0, 0)), mode=np_mode
  )
  crop = jax.jit(aug.random_crop, static_argnums=(2, 3))
  offsets = set()
  for i in range(24):
    got = np.asarray(crop(jax.random.key(i), image, padding, mode))
    assert got.shape == image.shape
    windows = [
      (y, x)
      for y in range(2 * padding + 1)
      for x in range(2 * padding + 1)
      if np.array_equal(got, padded[y : y + 6, x : x + 5])
    ]
    assert windows, i
    offsets.add(windows[0])
  assert len(offsets) > 5


def test_crop_with_zero_padding_is_identity_and_bad_modes_raise():
  image = _image()
  np.testing.assert_array_equal(
    aug.random_crop(jax.random.key(0), image, 0), image
  )
  with pytest.raises(ValueError, match="'constant' or 'reflect'"):
    aug.random_crop(jax.random.key(0), image, 2, 'edge')
  with pytest.raises(ValueError, match='padding=5'):
    aug.random_crop(jax.random.key(0), image, 5, 'reflect')


def test_brightness_range():
  image = np.full((4, 4, 3), 0.25, np.float32)
  jitter = jax.jit(aug.color_jitter, static_argnames='brightness')
  ratios = [
    float(jitter(jax.random.key(i), image, brightness=0.4)[0, 0, 0]) / 0.25
    for i in range(32)
  ]
  assert 0.6 <= min(ratios) and max(ratios) <= 1.4
  assert max(ratios) - min(ratios) > 0.4  # Spread over the range.


def test_contrast_keeps_constant_images_and_saturation_keeps_gray():
  constant = np.full((4, 4, 3), 0.3, np.float32)
  gray = np.repeat(_image(shape=(4, 4, 1)), 3, axis=-1)
  for i in range(8):
    key = jax.random.key(i)
    np.testing.assert_allclose(
      aug.color_jitter(key, constant, contrast=0.9), constant, atol=1e-6
    )
    np.testing.assert_allclose(
      aug.color_jitter(key, gray, saturation=0.9), gray, atol=1e-6
    )


def test_contrast_and_saturation_against_numpy():
  image = _image(3)
  key = jax.random.key(7)
  keys = jax.random.split(key, 3)
  luma = np.array([0.299, 0.587, 0.114], np.float32)
  f = float(jax.random.uniform(keys[1], (), minval=0.5, maxval=1.5))
  expected = np.clip(f * image + (1 - f) * (image @ luma).mean(), 0, 1)
  np.testing.assert_allclose(
    aug.color_jitter(key, image, contrast=0.5), expected, atol=1e-6
  )
  f = float(jax.random.uniform(keys[2], (), minval=0.5, maxval=1.5))
  expected = np.clip(f * image + (1 - f) * (image @ luma)[..., None], 0, 1)
  np.testing.assert_allclose(
    aug.color_jitter(key, image, saturation=0.5), expected, atol=1e-6
  )


def test_jitter_stays_in_unit_range():
  image = _image(1, (8, 8, 3))
  for i in range(8):
    out = np.asarray(aug.color_jitter(jax.random.key(i), image, 0.8, 0.8, 0.8))
    assert out.min() >= 0 and out.max() <= 1


def test_augment_batch_under_jit():
  images = jnp.asarray(np.stack([_image(i, (8, 8, 3)) for i in range(5)]))
  config = aug.standard_config(32)
  assert config.crop_padding == 4 and aug.standard_config(84).crop_padding == 8
  step = jax.jit(aug.augment, static_argnames='config')
  a = step(jax.random.key(0), images, config=config)
  b = step(jax.random.key(0), images, config=config)
  assert a.shape == images.shape and a.dtype == jnp.float32
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, step(jax.random.key(1), images, config=config))
  np.testing.assert_array_equal(
    aug.augment(jax.random.key(0), images, aug.AugmentConfig()), images
  )
  flips = aug.augment(jax.random.key(2), images, aug.AugmentConfig(flip=True))
  flipped = [
    bool(np.array_equal(flips[i], images[i, :, ::-1])) for i in range(5)
  ]
  for i in range(5):
    assert flipped[i] or np.array_equal(flips[i], images[i])
  with pytest.raises(ValueError, match=r'\[n, H, W, C\]'):
    aug.augment(jax.random.key(0), images[0], config)


@pytest.mark.parametrize(
  'field,value,message',
  [
    ('crop_padding', -1, 'crop_padding'),
    ('crop_mode', 'wrap', 'crop_mode'),
    ('brightness', -0.1, 'brightness'),
    ('saturation', float('nan'), 'saturation'),
  ],
)
def test_check_config_names_the_bad_field(field, value, message):
  aug.check_config(aug.AugmentConfig())
  aug.check_config(aug.standard_config(84))
  with pytest.raises(ValueError, match=message):
    aug.check_config(aug.AugmentConfig()._replace(**{field: value}))
