import sys

from carousel.cli import main

sys.exit(main())
