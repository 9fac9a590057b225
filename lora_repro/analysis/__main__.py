"""`python -m lora_repro.analysis subspace|spectrum|amplification --runs ...`"""

import sys

from lora_repro.analysis.cli import main

sys.exit(main())
