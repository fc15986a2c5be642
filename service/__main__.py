"""`python -m service`: check the config, then serve on $PORT until SIGTERM."""

from __future__ import annotations

import sys

from service.settings import ConfigError, load_settings


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2

    from service.observability.logging import configure_logging
    from service.server import serve

    configure_logging(settings.log_level)
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
