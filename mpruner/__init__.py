"""mpruner: depth pruning by CKA layer redundancy (MPruner), with a C++/CUDA CKA engine."""
from .version import __version__
