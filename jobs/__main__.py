"""`python -m jobs <command> [...]`: exit 0 done, 1 failed, 2 bad usage or config."""

from jobs.cli import main

raise SystemExit(main())
