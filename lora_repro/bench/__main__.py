"""`python -m lora_repro.bench ...`: the benchmark (and the `--one` worker processes it starts)."""

import sys

from lora_repro.bench.cli import main
from lora_repro.errors import ConfigError

try:
    sys.exit(main())
except ConfigError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
