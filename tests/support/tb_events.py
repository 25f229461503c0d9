"""Reads TensorBoard event files back (TFRecord framing, tensorboardX's protos)."""

import os
import struct

from tensorboardX.proto import event_pb2
from tensorboardX.proto import plugin_hparams_pb2


def parse_events(data):
  """The `Event`s of the bytes of one event file."""
  events = []
  offset = 0
  while offset < len(data):
    # uint64 length, uint32 crc of it, the record, uint32 crc of it.
    (length,) = struct.unpack('<Q', data[offset : offset + 8])
    record = data[offset + 12 : offset + 12 + length]
    events.append(event_pb2.Event.FromString(record))
    offset += 12 + length + 4
  return events


def read_events(logdir):
  """Every `Event` of every event file in `logdir`, file by file in order."""
  events = []
  for name in sorted(os.listdir(logdir)):
    if '.tfevents.' in name:
      with open(os.path.join(logdir, name), 'rb') as f:
        events += parse_events(f.read())
  return events


def scalars(logdir):
  """`{tag: [(step, value), ...]}` of the scalar summaries."""
  out = {}
  for event in read_events(logdir):
    for value in event.summary.value:
      if value.WhichOneof('value') == 'simple_value':
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


def hparams(logdir):
  """`(hparams, metric tags)` of the last HParams session in `logdir`:
  `{name: value}` of its session start, and the metric tags of its
  experiment."""
  values, metric_tags = None, None
  for event in read_events(logdir):
    for value in event.summary.value:
      plugin = value.metadata.plugin_data
      if plugin.plugin_name != 'hparams':
        continue
      data = plugin_hparams_pb2.HParamsPluginData.FromString(plugin.content)
      if value.tag == '_hparams_/session_start_info':
        values = {
          name: getattr(v, v.WhichOneof('kind'))
          for name, v in data.session_start_info.hparams.items()
        }
      elif value.tag == '_hparams_/experiment':
        metric_tags = [m.name.tag for m in data.experiment.metric_infos]
  return values, metric_tags
