"""Turn attribution payloads into HTTP response bodies, without torch or numpy.

The frontend process imports this; it must stay free of tensor libraries, so
the torch.save and safetensors containers are written byte by byte here.
"""

from intgrads_zmq.encoding.formats import (
    DEFAULT_FORMAT,
    FORMATS,
    EncodedBody,
    Format,
    encode,
    negotiate,
)
from intgrads_zmq.encoding.reply_size import ReplyLimits
from intgrads_zmq.encoding.safetensors_format import write_safetensors
from intgrads_zmq.encoding.torchsave import write_torch_save

__all__ = [
    "DEFAULT_FORMAT",
    "FORMATS",
    "EncodedBody",
    "Format",
    "ReplyLimits",
    "encode",
    "negotiate",
    "write_safetensors",
    "write_torch_save",
]
