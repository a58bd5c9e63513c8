import os
import sys

from . import cuda_env

cuda_env.apply(os.environ, sys.platform)  # before MLX starts

from .server import main  # noqa: E402

sys.exit(main())
