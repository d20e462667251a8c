"""``python -m vxlp_model.train`` (and ``torchrun --nproc_per_node N -m vxlp_model.train …``): see :mod:`.cli`."""

import sys

from .cli import main

sys.exit(main())
