"""Entry point of ``python -m bench.gate_sim`` (see :mod:`bench.gate_sim.cli`)."""

import sys

from bench.gate_sim.cli import main

sys.exit(main())
