import sys

from wrapperd.cli import main

sys.exit(main())
