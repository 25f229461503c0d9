"""ILSVRC-2012 training images as users bring them, for the datasets built
from them (mini-ImageNet, tiered-ImageNet): class folders, or the train tar
of per-class tars."""

import io
import tarfile

from jaxmeta.data import ilsvrc


def write_folder(root, classes):
  """`classes` {wnid: {file name: bytes}} as `root/<wnid>/<file>`."""
  for wnid, files in classes.items():
    (root / wnid).mkdir(parents=True)
    for name, data in files.items():
      (root / wnid / name).write_bytes(data)
  return root


def tar_bytes(files):
  """An uncompressed tar of `files` {name: bytes}."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode='w') as archive:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))
  return buffer.getvalue()


def write_tar(root, classes):
  """`ILSVRC2012_img_train.tar` in `root`: a tar of per-class tars."""
  root.mkdir(parents=True, exist_ok=True)
  path = root / ilsvrc.TAR_NAME
  path.write_bytes(
    tar_bytes({f'{w}.tar': tar_bytes(files) for w, files in classes.items()})
  )
  return path
