"""The training program on CUB-200-2011: a tiny synthetic copy in the real
tgz (`support.cub_files`: the 200 real class folders, 2 to 4 images each),
prepared, loaded with its ragged classes and trained on by a preset."""

import pytest

from experiments.configs import protonet_cub
from jaxmeta.data import cub
from support import cub_files
from support import tiny_runs


def test_protonet_cub_preset_trains_on_the_tgz(tmp_path, monkeypatch):
  monkeypatch.delenv(cub.SOURCE_ENV, raising=False)
  tgz = cub_files.write_tgz(tmp_path / 'source', cub_files.fake_cub()[0])
  config = protonet_cub.get_config('conv4_5w1s')
  config.model.num_filters = 4
  config.data.image_size = 32
  # 1 + 2 images per class: the classes of 2 images are never drawn.
  config.update(
    ways=2,
    train_ways=3,
    shots=1,
    queries=2,
    num_iterations=4,
    eval_every=2,
    checkpoint_every=2,
    log_every=1,
    num_val_tasks=4,
    num_eval_tasks=4,
    eval_batch_size=4,
  )
  results = tiny_runs.run(
    config,
    tmp_path / 'run',
    data_dir=str(tmp_path / 'tfds'),
    source_dir=str(tgz),
  )
  assert (results['dataset'], results['split'], results['preset']) == (
    'cub',
    'chen',
    'protonet_cub:conv4_5w1s',
  )
  assert results['iterations'] == 4 and 0 <= results['test_accuracy'] <= 1


def test_a_missing_tgz_is_one_clear_error(tmp_path, monkeypatch):
  monkeypatch.delenv(cub.SOURCE_ENV, raising=False)
  with pytest.raises(cub.CUBError, match='Fix: download CUB_200_2011.tgz'):
    tiny_runs.run(
      protonet_cub.get_config('conv4_5w5s'),
      tmp_path / 'run',
      data_dir=str(tmp_path / 'tfds'),
      source_dir=str(tmp_path / 'empty'),
    )
