"""`python -m analysis subspace|spectrum|amplification --runs ...`"""

import sys

from analysis.cli import main

sys.exit(main())
