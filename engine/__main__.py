import os
import sys

from . import startup

startup.apply(os.environ, sys.platform)  # before MLX starts

from .server import main  # noqa: E402

sys.exit(main())
