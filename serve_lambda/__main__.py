import sys

from serve_lambda.cli import main

sys.exit(main())
